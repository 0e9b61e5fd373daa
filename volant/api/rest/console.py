"""REST routes of a VM's serial console: a WebSocket bridged to it, and its log.

The WebSocket carries the console's bytes as binary frames both ways (text frames from the
client are taken as UTF-8 input). volantd pings every HEARTBEAT seconds and drops a client that
does not answer. Close codes, for clients to act on (the reason says the same for people):
1000 the client left; 1001 volantd is stopping; 4000 the VM's console closed (the VM stopped,
crashed or was deleted); 4001 another client took the console over (`?force=true`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import WSMsgType, web

from volant.engine import Console, ConsoleEnd
from volant.model import InvalidArgument, PermissionDenied

from .common import engine_of
from .peer import authorize
from .schemas import ConsoleLogQuery, ConsoleQuery, parse_query
from .spec import Api, Body

TAG = "vms"
HEARTBEAT = 30.0
MAX_INPUT = 1024 * 1024
CLOSE: Mapping[ConsoleEnd, tuple[int, str]] = {
    ConsoleEnd.DETACHED: (1000, "detached"),
    ConsoleEnd.VM_STOPPED: (4000, "the VM's console closed: it stopped or crashed"),
    ConsoleEnd.TAKEN_OVER: (4001, "another client took the console over"),
}
GOING_AWAY = (1001, "volantd is stopping")
# The open console WebSockets, closed when the app shuts down (they never end on their own).
SOCKETS = web.AppKey("console_sockets", set[web.WebSocketResponse])


async def vm_console(request: web.Request) -> web.StreamResponse:
    """Attach to the VM's serial console; errors before the upgrade are problem+json."""
    await authorize(request)  # the console is a root shell in the guest
    query = parse_query(ConsoleQuery, request.query)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_INPUT)
    if not ws.can_prepare(request).ok:
        raise InvalidArgument(
            "the console is a WebSocket: send a GET with Upgrade: websocket",
            hint="`volar vms console NAME` attaches from a terminal",
        )
    same_origin(request)
    name = request.match_info["name"]
    async with engine_of(request).attach_console(name, force=query.force) as console:
        await ws.prepare(request)
        request.app[SOCKETS].add(ws)
        try:
            await _bridge(ws, console)
        finally:
            request.app[SOCKETS].discard(ws)
    return ws


def same_origin(request: web.Request) -> None:
    """Refuse a browser page from another origin: browsers let any page open a WebSocket to
    any address (no CORS), and this one is a root shell. Clients other than browsers send no
    Origin."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise PermissionDenied(f"a console WebSocket from origin {origin!r} is refused")


async def vm_console_log(request: web.Request) -> web.Response:
    """The tail of what the VM printed on its console, over all its boots (UTF-8, with
    undecodable bytes replaced)."""
    await authorize(request)  # guests print secrets on their console too
    query = parse_query(ConsoleLogQuery, request.query)
    data = await engine_of(request).console_log(request.match_info["name"], query.lines)
    return web.Response(text=data.decode(errors="replace"), content_type="text/plain")


async def close_consoles(app: web.Application) -> None:
    """on_shutdown: tell every attached client that volantd is going away."""
    code, reason = GOING_AWAY
    sockets = app[SOCKETS]
    # A copy: each handler removes its socket from the set as it ends.
    await asyncio.gather(*[ws.close(code=code, message=reason.encode()) for ws in [*sockets]])


async def _bridge(ws: web.WebSocketResponse, console: Console) -> None:
    """Copy both ways until either side ends; each direction ends the other."""
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_to_guest(ws, console))
        tasks.create_task(_to_client(ws, console))


async def _to_guest(ws: web.WebSocketResponse, console: Console) -> None:
    async for message in ws:  # ends on the client's close, or on a close from this side
        if message.type is WSMsgType.BINARY:
            await console.write(message.data)
        elif message.type is WSMsgType.TEXT:
            await console.write(message.data.encode())
        elif message.type is WSMsgType.ERROR:
            break
    await console.close()  # DETACHED, unless the console had already ended otherwise


async def _to_client(ws: web.WebSocketResponse, console: Console) -> None:
    while data := await console.read():
        try:
            await ws.send_bytes(data)
        except ConnectionResetError:
            break
    code, reason = CLOSE[console.ended or ConsoleEnd.DETACHED]
    await ws.close(code=code, message=reason.encode())


def add_routes(api: Api) -> None:
    api.add(
        "GET",
        "/ws/v1/vms/{name}/console",
        vm_console,
        summary="Attach to a VM's serial console (WebSocket)",
        tag=TAG,
        query=ConsoleQuery,
        stream=True,
        ok={
            101: (
                "Switching to WebSocket: the console's bytes as binary frames both ways. "
                "Close codes: 1000 detached, 1001 volantd stopping, 4000 the VM stopped, "
                "4001 taken over by another client",
                None,
            )
        },
        errors=(404, 409, 503),
    )
    api.add(
        "GET",
        "/api/v1/vms/{name}/console/log",
        vm_console_log,
        summary="The last lines a VM printed on its serial console",
        tag=TAG,
        query=ConsoleLogQuery,
        ok={200: ("The log's last lines", Body(media="text/plain", schema={"type": "string"}))},
        errors=(404,),
    )
