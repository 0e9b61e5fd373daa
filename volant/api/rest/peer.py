"""Who is calling over the unix socket (SO_PEERCRED), and whether polkit lets them."""

from __future__ import annotations

from aiohttp import web

from volant.auth.polkit import Action, Authorizer, ProcessCaller, socket_peer

AUTHORIZER = web.AppKey("authorizer", Authorizer)


def unix_peer(request: web.Request) -> ProcessCaller | None:
    """The peer process of a unix-socket request; None for TCP."""
    transport = request.transport
    return socket_peer(transport.get_extra_info("socket") if transport is not None else None)


async def authorize(request: web.Request, action: Action = Action.MANAGE_VMS) -> None:
    """Ask polkit about a unix-socket caller; TCP callers are not checked here (API keys are)."""
    caller = unix_peer(request)
    if caller is not None:
        await request.app[AUTHORIZER].check(caller, action)
