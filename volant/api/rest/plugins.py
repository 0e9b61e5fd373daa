"""REST routes for plugins and for reaching a VM's workload (actions, OpenAPI, logs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from aiohttp import web

from volant.auth.polkit import Action
from volant.engine.agentports import GuestReplyLike
from volant.model import Plugin, PluginSource

from . import replies as r
from . import sse
from .common import engine_of, read_json
from .peer import authorize
from .replies import free_json
from .schemas import InstallPluginRequest, LogsQuery, parse_body, parse_query
from .spec import Api, Body

TAG = "plugins"

SSE_KEEPALIVE = 15.0
T = TypeVar("T")


class ActionCall(Protocol):
    """Engine.call_action or Engine.call_plugin_action."""

    async def __call__(
        self, target: str, action: str, /, *, body: bytes, content_type: str
    ) -> GuestReplyLike: ...


def _with_manifest(plugin: Plugin) -> dict[str, Any]:
    return {**plugin.to_dict(), "manifest": json.loads(plugin.manifest_json)}


async def list_plugins(request: web.Request) -> web.Response:
    plugins = await engine_of(request).list_plugins()
    return web.json_response({"plugins": [p.to_dict() for p in plugins], "total": len(plugins)})


async def plugin_schema(request: web.Request) -> web.Response:
    return web.json_response(engine_of(request).plugin_schema())


async def install_plugin(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    body = parse_body(InstallPluginRequest, await read_json(request))
    source = PluginSource(
        text=body.manifest.encode("utf-8"),
        url=body.url,
        signature=body.signature,
        origin=body.origin,
    )
    plugin = await engine_of(request).install_plugin(source, replace=body.replace)
    return web.json_response(_with_manifest(plugin), status=201)


async def get_plugin(request: web.Request) -> web.Response:
    plugin = await engine_of(request).get_plugin(request.match_info["plugin"])
    return web.json_response(_with_manifest(plugin))


async def plugin_manifest(request: web.Request) -> web.Response:
    plugin = await engine_of(request).get_plugin(request.match_info["plugin"])
    return web.json_response(json.loads(plugin.manifest_json))


async def enable_plugin(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    plugin = await engine_of(request).enable_plugin(request.match_info["plugin"])
    return web.json_response(plugin.to_dict())


async def disable_plugin(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    plugin = await engine_of(request).disable_plugin(request.match_info["plugin"])
    return web.json_response(plugin.to_dict())


async def remove_plugin(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    await engine_of(request).remove_plugin(request.match_info["plugin"])
    return web.Response(status=204)


async def plugin_action(request: web.Request) -> web.Response:
    return await _action(request, engine_of(request).call_plugin_action, "plugin")


async def vm_action(request: web.Request) -> web.Response:
    return await _action(request, engine_of(request).call_action, "name")


async def _action(request: web.Request, call: ActionCall, target: str) -> web.Response:
    """Call an action of the VM or plugin the path's `target` names, passing the body through."""
    await authorize(request)
    reply = await call(
        request.match_info[target],
        request.match_info["action"],
        body=await request.read(),
        content_type=request.content_type if request.can_read_body else "",
    )
    return _passthrough(reply)


async def vm_openapi(request: web.Request) -> web.Response:
    content_type, body = await engine_of(request).vm_openapi(request.match_info["name"])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def vm_logs(request: web.Request) -> web.StreamResponse:
    """Recent workload output as JSON; with ?follow=true a live Server-Sent Events stream."""
    engine = engine_of(request)
    name = request.match_info["name"]
    query = parse_query(LogsQuery, request.query)
    following = query.follow
    limit = query.limit or (50 if following else 200)
    if not following:
        return web.json_response({"lines": await engine.vm_recent_logs(name, limit)})
    ticks = with_keepalives(engine.vm_logs(name, limit), SSE_KEEPALIVE)
    # The first item before the answer starts: no VM or no agent still leaves as problem+json.
    first = await anext(ticks, None)
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    if first is not None:
        await response.write(_sse_line(first))
    async for line in ticks:
        await response.write(sse.HEARTBEAT if line is None else _sse_line(line))
    await response.write_eof()
    return response


def _sse_line(line: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(line, sort_keys=True)}\n\n".encode()


async def with_keepalives(lines: AsyncIterator[T], every: float) -> AsyncIterator[T | None]:
    """lines, with a None whenever `every` seconds pass without one. A pending read is never
    cancelled for a keepalive (wait_for would, and that ends the source generator)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(lines))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                yield finished.result()
            except StopAsyncIteration:
                return
    finally:
        if pending is not None:
            pending.cancel()


def _passthrough(reply: GuestReplyLike) -> web.Response:
    """The workload's answer as it gave it (status, type and body)."""
    headers = {"Content-Type": reply.content_type} if reply.content_type else {}
    return web.Response(status=reply.status, body=reply.body, headers=headers)


def add_routes(api: Api) -> None:
    plugin = Body(r.Plugin)
    full = Body(r.PluginWithManifest)
    one = "/api/v1/plugins/{plugin}"
    anything = Body(media="*/*", schema=free_json("The workload's own answer"))
    api.add(
        "GET",
        "/api/v1/plugins",
        list_plugins,
        summary="List plugins",
        tag=TAG,
        ok={200: ("Installed plugins", Body(r.PluginList))},
    )
    api.add(
        "POST",
        "/api/v1/plugins",
        install_plugin,
        summary="Install a plugin",
        tag=TAG,
        body=InstallPluginRequest,
        ok={201: ("Installed", full)},
        errors=(400, 403, 409, 502, 507),
    )
    # Before /{plugin}, which would otherwise take it; manifests may not use the name.
    api.add(
        "GET",
        "/api/v1/plugins/schema",
        plugin_schema,
        summary="Manifest JSON Schema",
        tag=TAG,
        ok={200: ("JSON Schema 2020-12", Body(schema={"type": "object"}))},
    )
    api.add(
        "GET",
        one,
        get_plugin,
        summary="Get a plugin and its manifest",
        tag=TAG,
        ok={200: ("The plugin", full)},
        errors=(404,),
    )
    api.add(
        "DELETE",
        one,
        remove_plugin,
        summary="Remove a plugin no VM uses",
        tag=TAG,
        ok={204: ("Removed", None)},
        errors=(404, 409, 507),
    )
    api.add(
        "GET",
        f"{one}/manifest",
        plugin_manifest,
        summary="A plugin's manifest",
        tag=TAG,
        ok={200: ("The manifest", Body(schema={"type": "object"}))},
        errors=(404,),
    )
    api.add(
        "POST",
        f"{one}/enable",
        enable_plugin,
        summary="Let new VMs use a plugin",
        tag=TAG,
        ok={200: ("The plugin", plugin)},
        errors=(404, 507),
    )
    api.add(
        "POST",
        f"{one}/disable",
        disable_plugin,
        summary="Stop new VMs using a plugin",
        tag=TAG,
        ok={200: ("The plugin", plugin)},
        errors=(404, 507),
    )
    api.add(
        "POST",
        f"{one}/actions/{{action}}",
        plugin_action,
        tag=TAG,
        summary="Run an action on the first running VM of a plugin",
        body_media=("*/*",),
        ok={},
        default=("The workload's answer, passed through", anything),
        errors=(404, 409, 502, 504),
    )
    api.add(
        "POST",
        "/api/v1/vms/{name}/actions/{action}",
        vm_action,
        tag="vms",
        summary="Run a plugin action on a VM",
        body_media=("*/*",),
        ok={},
        default=("The workload's answer, passed through", anything),
        errors=(404, 409, 502, 504),
    )
    api.add(
        "GET",
        "/api/v1/vms/{name}/openapi",
        vm_openapi,
        tag="vms",
        summary="The OpenAPI document of a VM's workload",
        ok={200: ("The document, JSON or YAML", anything)},
        errors=(404, 409, 502),
    )
    api.add(
        "GET",
        "/api/v1/vms/{name}/logs",
        vm_logs,
        tag="vms",
        stream=True,
        summary="Recent workload output, or a live stream with ?follow=true",
        query=LogsQuery,
        ok={
            200: (
                "Lines as JSON, or Server-Sent Events when following",
                (Body(r.LogLines), Body(media=sse.MEDIA, schema={})),
            )
        },
        errors=(404, 409, 502),
    )
