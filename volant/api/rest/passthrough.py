"""REST routes to the workload's own HTTP API: the passthrough and its OpenAPI operations.

`/api/v1/vms/{name}/proxy/{path}` sends any method, query and body to the workload's base_url +
path through the VM's agent and streams the answer back as it comes; a WebSocket request is
accepted here and relayed frame by frame to a WebSocket the workload accepts (through the agent,
which splices the bytes after the workload's 101). The API key (header or `api_key` query
parameter), volantd's own headers and one hop's headers never reach the workload. Like exec, it
needs manage-vms under polkit on the unix socket, or the API key over TCP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from volant.engine.passthrough import Passthrough
from volant.model import VolantError
from volant.model.operations import Headers, ProxySocket

from .access import KEY_HEADER, KEY_QUERY
from .common import engine_of, read_json
from .console import HEARTBEAT, same_origin
from .peer import authorize
from .replies import free_json
from .schemas import parse_body
from .spec import Api, Body

log = logging.getLogger(__name__)

TAG = "vms"
PROXY = "/api/v1/vms/{name}/proxy/{path}"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CHUNK = 64 * 1024
MAX_MESSAGE = 16 * 1024 * 1024
TRUNCATED_HEADER = "X-Volant-Truncated"
# One hop's headers, volantd's credentials, and what aiohttp frames anew for the next hop
# (Expect: volantd's server has answered the client's 100-continue already).
DROP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "proxy-authorization", KEY_HEADER.lower(), "x-volant-agent-secret",
     "expect"}
)  # fmt: skip
WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "content-length"}
)  # fmt: skip


class OperationCall(BaseModel):
    """POST /api/v1/vms/{name}/operations/{operation}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, str] = Field(default_factory=dict, description="Path parameters")
    query: list[tuple[str, str]] = Field(
        default_factory=list, description="Query parameters as [name, value] pairs"
    )
    body: Any = Field(None, description="A JSON request body; null sends none")


class OperationItem(BaseModel):
    key: str = Field(description="What `vms call` takes: the operationId, or METHOD:/path")
    operation_id: str | None
    method: str
    path: str
    summary: str
    path_params: list[str]


class OperationList(BaseModel):
    operations: list[OperationItem]


def forwarded(headers: Mapping[str, str], *, websocket: bool = False) -> Headers:
    """The client's headers that go on to the workload: not one hop's, and not those the
    client's Connection header names as its hop's."""
    named = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    drop = DROP | (named - {"content-length"}) | (WS_HANDSHAKE if websocket else set())
    return tuple((k, v) for k, v in headers.items() if k.lower() not in drop)


def workload_target(request: web.Request) -> str:
    """The workload's path (as the client encoded it) and query, `api_key` left out."""
    prefix = f"/api/v1/vms/{request.match_info['name']}/proxy"
    raw = request.rel_url.raw_path
    path = raw[len(prefix) :] if raw.startswith(prefix + "/") else "/" + request.match_info["path"]
    parts = [
        p
        for p in request.rel_url.raw_query_string.split("&")
        if p and unquote_plus(p.split("=")[0]) != KEY_QUERY
    ]
    return path + ("?" + "&".join(parts) if parts else "")


async def vm_proxy(request: web.Request) -> web.StreamResponse:
    """Any method to the workload; a WebSocket when the client asks for one."""
    await authorize(request)  # the workload's API acts for whoever calls it
    passthrough = engine_of(request).passthrough
    name, target = request.match_info["name"], workload_target(request)
    if request.method == "GET" and web.WebSocketResponse().can_prepare(request).ok:
        same_origin(request)
        return await _websocket(request, passthrough, name, target)
    body = _body(request) if request.body_exists else None
    response = web.StreamResponse()
    try:
        async with passthrough.request(
            name, request.method, target, forwarded(request.headers), body
        ) as answer:
            response.set_status(answer.status)
            for key, value in answer.headers:
                response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in answer.body:
                await response.write(chunk)
            await response.write_eof()
    except (ConnectionError, VolantError) as exc:
        if not response.prepared:
            raise  # nothing sent yet: the caller gets the problem
        # Mid-answer the client or the guest went away: all that can be done is to stop.
        log.info("passthrough %s %s on VM %s ended early: %s", request.method, target, name, exc)
    return response


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _websocket(
    request: web.Request, passthrough: Passthrough, name: str, target: str
) -> web.WebSocketResponse:
    asked = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    headers = forwarded(request.headers, websocket=True)
    async with passthrough.websocket(name, target, headers, [p for p in asked if p]) as upstream:
        protocols = (upstream.protocol,) if upstream.protocol else ()
        ws = web.WebSocketResponse(
            protocols=protocols, heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE
        )
        await ws.prepare(request)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_up(ws, upstream))
            tasks.create_task(_down(ws, upstream))
    return ws


async def _up(ws: web.WebSocketResponse, upstream: ProxySocket) -> None:
    try:
        async for message in ws:  # ends on the client's close
            if message.type is WSMsgType.TEXT:
                await upstream.send(str(message.data))
            elif message.type is WSMsgType.BINARY:
                await upstream.send(bytes(message.data))
            elif message.type is WSMsgType.ERROR:
                break
    except ConnectionError:
        pass  # the workload's side went away: _down closes the client's
    await upstream.close(_sendable(ws.close_code))


async def _down(ws: web.WebSocketResponse, upstream: ProxySocket) -> None:
    async for message in upstream.messages():
        try:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
        except ConnectionResetError:
            break
    await ws.close(code=_sendable(upstream.close_code))


def _sendable(code: int | None) -> int:
    """A close code one side received, as the other may be sent it: 1005 (none given) and
    1006 (connection lost) are only ever reported, never sent."""
    valid = code is not None and (
        1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code < 5000
    )
    return code if valid and code is not None else 1000


async def vm_operations(request: web.Request) -> web.Response:
    operations = await engine_of(request).passthrough.operations(request.match_info["name"])
    return web.json_response({"operations": [op.to_dict() for op in operations]})


async def vm_call_operation(request: web.Request) -> web.Response:
    """Call one operation; the workload's answer comes back as it is (cut at 1 MiB)."""
    await authorize(request)
    call = parse_body(OperationCall, await read_json(request))
    answer = await engine_of(request).passthrough.call_operation(
        request.match_info["name"],
        request.match_info["operation"],
        params=call.params,
        query=call.query,
        body=call.body,
    )
    headers = {"Content-Type": answer.content_type or "application/octet-stream"}
    if answer.truncated:
        headers[TRUNCATED_HEADER] = "true"
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def add_routes(api: Api) -> None:
    anything = Body(media="*/*", schema=free_json("The workload's own answer"))
    for method in METHODS:
        api.add(
            method,
            PROXY,
            vm_proxy,
            operation_id=f"vm_proxy_{method.lower()}",
            tag=TAG,
            summary="Pass a request (or, with GET, a WebSocket) through to the VM's workload",
            body_media=("*/*",) if method not in ("GET", "HEAD") else (),
            stream=True,
            ok={101: ("Switching to a WebSocket relayed to the workload's", None)}
            if method == "GET"
            else {},
            default=("The workload's answer, streamed as it comes", anything),
            errors=(404, 409, 503),
        )
    api.add(
        "GET",
        "/api/v1/vms/{name}/operations",
        vm_operations,
        tag=TAG,
        summary="The operations of the VM workload's OpenAPI document",
        ok={200: ("Each operation: key, operationId, method, path, summary", Body(OperationList))},
        errors=(404, 409, 502, 503),
    )
    api.add(
        "POST",
        "/api/v1/vms/{name}/operations/{operation}",
        vm_call_operation,
        tag=TAG,
        summary="Call one operation of the VM workload's OpenAPI document",
        body=OperationCall,
        ok={},
        default=("The workload's answer (at most 1 MiB; X-Volant-Truncated when cut)", anything),
        errors=(404, 409, 502, 503),
    )
