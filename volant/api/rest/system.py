"""REST routes about volantd and the host: health, status, info, the OpenAPI document."""

from __future__ import annotations

import copy
from dataclasses import asdict

from aiohttp import web

from . import replies as r
from .common import API, engine_of
from .spec import Api, Body

TAG = "system"
API_VERSION = "v1"


async def healthz(_request: web.Request) -> web.Response:
    """Open to every caller: answers while volantd serves requests."""
    return web.json_response({"status": "ok"})


async def system_status(request: web.Request) -> web.Response:
    status = await engine_of(request).system_status()
    return web.json_response(asdict(status))


async def system_info(request: web.Request) -> web.Response:
    info = await engine_of(request).system_info()
    return web.json_response({**asdict(info), "api_version": API_VERSION})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition: VMs by status, create latency, subscribers, errors."""
    content_type, body = await engine_of(request).metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route this app serves, with this host's VM limits."""
    engine = engine_of(request)
    document = copy.deepcopy(request.app[API].openapi(version=engine.version))
    create = document["components"]["schemas"]["CreateVMRequest"]["properties"]
    config = engine.config
    create["cpu_cores"]["anyOf"][0].update(minimum=1, maximum=config.vm_max_cpus)
    create["memory_mb"]["anyOf"][0].update(
        minimum=config.vm_min_memory_mb, maximum=config.vm_max_memory_mb
    )
    return web.json_response(document)


def add_routes(api: Api) -> None:
    api.add(
        "GET",
        "/healthz",
        healthz,
        summary="Liveness",
        tag=TAG,
        public=True,
        ok={200: ("volantd is serving", Body(r.Health))},
    )
    api.add(
        "GET",
        "/api/v1/system/status",
        system_status,
        summary="VMs, pool and host load",
        tag=TAG,
        ok={200: ("Status", Body(r.SystemStatus))},
    )
    api.add(
        "GET",
        "/api/v1/system/info",
        system_info,
        summary="Version and configuration",
        tag=TAG,
        ok={200: ("Info", Body(r.SystemInfo))},
    )
    api.add(
        "GET",
        "/metrics",
        metrics,
        summary="Prometheus metrics",
        tag=TAG,
        ok={200: ("Text exposition format 0.0.4", Body(media="text/plain", schema={}))},
    )
    api.add(
        "GET",
        "/api/v1/openapi.json",
        openapi,
        summary="This document",
        tag=TAG,
        ok={200: ("OpenAPI 3.1", Body(schema={"type": "object"}))},
    )
