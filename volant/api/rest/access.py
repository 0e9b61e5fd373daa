"""Who may call the REST API over TCP: an allowed address and, when one is set, the API key.

The unix socket is guarded by its file mode (root and group `volant`) and by polkit on every
change, so the key is a TCP matter. `/healthz` is open to every caller.
"""

from __future__ import annotations

import asyncio
import hmac
from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web

from volant.model import PermissionDenied, Unauthenticated, Unavailable

from .common import API, engine_of
from .peer import unix_peer
from .spec import Handler

KEY_HEADER = "X-Volant-API-Key"
KEY_QUERY = "api_key"
OPEN_PATHS = frozenset({"/healthz"})


def check_address(remote: str | None, networks: tuple[IPv4Network | IPv6Network, ...]) -> None:
    if not networks:
        return
    try:
        address = ip_address((remote or "").split("%")[0])
    except ValueError as exc:
        raise PermissionDenied(f"caller address {remote!r} is not an IP address") from exc
    if not any(address in net for net in networks if net.version == address.version):
        raise PermissionDenied(
            f"{address} is not in api.allow_cidr", hint="VOLANT_API_ALLOW_CIDR lists who may call"
        )


def check_key(request: web.Request, key: str) -> None:
    if not key:
        return
    given = request.headers.get(KEY_HEADER) or request.query.get(KEY_QUERY) or ""
    # Constant time: how much of a guess matched must not show in how long the answer takes.
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise Unauthenticated(
            "missing or wrong API key" if given else "an API key is required",
            hint=f"send it in the {KEY_HEADER} header "
            "(volar: VOLANT_API_KEY, or api_key in volar.yaml)",
        )


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS and unix_peer(request) is None:
        config = engine_of(request).config
        check_address(request.remote, config.allowed_networks)
        check_key(request, config.api_key)
    return await handler(request)


@web.middleware
async def timeout_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cut a request that takes longer than api.request_timeout; streams are exempt."""
    op = request.app[API].operation_of(request)
    if op is not None and op.stream:
        return await handler(request)
    limit = engine_of(request).config.api_request_timeout
    try:
        async with asyncio.timeout(limit):
            return await handler(request)
    except TimeoutError as exc:
        raise Unavailable(
            f"{request.method} {request.path} took longer than {limit:g}s and was cut",
            hint="api.request_timeout sets the limit; the operation may still finish: "
            "`volar events` shows what happened",
        ) from exc
