"""The aiohttp application: routes, problem+json errors, typed app state."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from volant.auth.polkit import Authorizer
from volant.engine import Engine
from volant.model import ERROR_TABLE, ErrorCode, InvalidArgument, VMSpec, VolantError

from . import plugins
from .common import ENGINE, engine_of, read_json
from .peer import AUTHORIZER, authorize
from .schemas import CreateVMRequest, parse_body

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
MAX_BODY = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, code: ErrorCode, detail: str, **extra: Any) -> web.Response:
    wire = ERROR_TABLE[code]
    body = {
        "type": wire.problem_type,
        "title": wire.title,
        "status": status,
        "detail": detail,
        "code": code.value,
        **{k: v for k, v in extra.items() if v},
    }
    return web.json_response(body, status=status, content_type=PROBLEM)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as RFC 9457 problem+json with the code's HTTP status."""
    try:
        return await handler(request)
    except VolantError as exc:
        wire = exc.wire
        return problem(wire.http_status, exc.code, exc.message, field=exc.field, hint=exc.hint)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = ErrorCode.NOT_FOUND if exc.status == 404 else ErrorCode.INVALID_ARGUMENT
        return problem(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, ErrorCode.INTERNAL, "internal error; see the volantd journal")


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def system_status(request: web.Request) -> web.Response:
    status = await engine_of(request).system_status()
    return web.json_response(asdict(status))


async def list_vms(request: web.Request) -> web.Response:
    vms = await engine_of(request).list_vms()
    return web.json_response({"vms": [vm.to_dict() for vm in vms], "total": len(vms)})


async def create_vm(request: web.Request) -> web.Response:
    await authorize(request)
    engine = engine_of(request)
    body = parse_body(CreateVMRequest, await read_json(request))
    spec = VMSpec(
        name=body.name,
        plugin=body.plugin,
        cpu_cores=body.cpu_cores,
        memory_mb=body.memory_mb,
        kernel_args=body.kernel_args,
    )
    vm = await engine.create_vm(spec)
    return web.json_response(vm.to_dict(), status=201)


async def get_vm(request: web.Request) -> web.Response:
    """The VM, with `usage` {cpu_seconds, memory_bytes} (null where the host cannot tell)."""
    engine = engine_of(request)
    vm = await engine.get_vm(request.match_info["name"])
    usage = await engine.vm_usage(vm.name)
    return web.json_response({**vm.to_dict(), "usage": usage.to_dict()})


async def vm_usage(request: web.Request) -> web.Response:
    usage = await engine_of(request).vm_usage(request.match_info["name"])
    return web.json_response(usage.to_dict())


async def delete_vm(request: web.Request) -> web.Response:
    await authorize(request)
    await engine_of(request).delete_vm(request.match_info["name"])
    return web.Response(status=204)


async def start_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).start_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


async def stop_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).stop_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


async def restart_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).restart_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


async def list_events(request: web.Request) -> web.Response:
    """Persisted events after ?after=<id> (oldest first), optionally for one ?vm=."""
    after = _int_query(request, "after", 0)
    limit = _int_query(request, "limit", 1000)
    events = await engine_of(request).list_events(after, limit)
    vm = request.query.get("vm")
    return web.json_response({"events": [e.to_dict() for e in events if vm is None or e.vm == vm]})


def _int_query(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidArgument(f"query parameter {key!r} must be a non-negative integer")
    return int(raw)


def make_app(engine: Engine, authorizer: Authorizer | None = None) -> web.Application:
    """The REST app; without an authorizer, unix-socket callers are judged by uid alone."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[ENGINE] = engine
    app[AUTHORIZER] = authorizer or Authorizer(None)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/system/status", system_status)
    app.router.add_get("/api/v1/vms", list_vms)
    app.router.add_post("/api/v1/vms", create_vm)
    app.router.add_get("/api/v1/vms/{name}", get_vm)
    app.router.add_delete("/api/v1/vms/{name}", delete_vm)
    app.router.add_get("/api/v1/vms/{name}/usage", vm_usage)
    app.router.add_post("/api/v1/vms/{name}/start", start_vm)
    app.router.add_post("/api/v1/vms/{name}/stop", stop_vm)
    app.router.add_post("/api/v1/vms/{name}/restart", restart_vm)
    app.router.add_get("/api/v1/events", list_events)
    plugins.add_routes(app.router)
    return app
