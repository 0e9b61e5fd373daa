"""Who is calling over the unix socket (SO_PEERCRED), and whether polkit lets them."""

from __future__ import annotations

import socket
import struct

from aiohttp import web

from volant.auth.polkit import Action, Authorizer, ProcessCaller

AUTHORIZER = web.AppKey("authorizer", Authorizer)
_UCRED = struct.Struct("3i")


def unix_peer(request: web.Request) -> ProcessCaller | None:
    """The peer process of a unix-socket request; None for TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return ProcessCaller.from_peercred(pid, uid)


async def authorize(request: web.Request, action: Action = Action.MANAGE_VMS) -> None:
    """Ask polkit about a unix-socket caller; TCP callers are not checked here (API keys are)."""
    caller = unix_peer(request)
    if caller is not None:
        await request.app[AUTHORIZER].check(caller, action)
