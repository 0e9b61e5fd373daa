"""The aiohttp application: routes declared once (with their OpenAPI), middlewares, app state."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from volant.auth.polkit import Authorizer
from volant.engine import Engine

from . import builds, console, events, exec, files, passthrough, plugins, system, vms, volumes
from .access import access_middleware, timeout_middleware
from .check import openapi_check_middleware
from .common import API, ENGINE
from .mount import Mount
from .peer import AUTHORIZER
from .problem import errors_middleware
from .spec import Api
from .sse import STREAMS, OpenStreams

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
DESCRIPTION = (
    "Volant runs microVMs on one Linux host. Over TCP, give the API key (when volantd has one) "
    "in the X-Volant-API-Key header or the api_key query parameter; the unix socket is for "
    "root and group volant. Errors are RFC 9457 problem+json with a stable `code`."
)


def declare(api: Api) -> None:
    """Every route, in matching order."""
    system.add_routes(api)
    vms.add_routes(api)
    events.add_routes(api)
    builds.add_routes(api)  # before plugins: POST /plugins/build is not a plugin's route
    plugins.add_routes(api)
    volumes.add_routes(api)
    console.add_routes(api)
    files.add_routes(api)
    exec.add_routes(api)
    passthrough.add_routes(api)


def make_app(
    engine: Engine,
    authorizer: Authorizer | None = None,
    *,
    max_body: int = MAX_BODY,
    mounts: Sequence[Mount] = (),
) -> web.Application:
    """The REST app; without an authorizer, unix-socket callers are judged by uid alone.
    `mounts` are other front-ends it serves (the daemon mounts the MCP endpoint)."""
    app = web.Application(
        middlewares=[
            # Outermost first: the check sees the final answer, errors included.
            openapi_check_middleware,
            errors_middleware,
            access_middleware,
            timeout_middleware,
        ],
        client_max_size=max_body,
    )
    api = Api(title="Volant", description=DESCRIPTION)
    declare(api)
    for mount in mounts:
        mount.declare(api)
        mount.attach(app)
    api.register(app.router)
    app[ENGINE] = engine
    app[API] = api
    app[AUTHORIZER] = authorizer or Authorizer(None)
    app[console.SOCKETS] = set()
    app.on_shutdown.append(console.close_consoles)
    app[STREAMS] = OpenStreams()
    app.on_shutdown.append(_end_streams)
    return app


async def _end_streams(app: web.Application) -> None:
    """Runs before the server waits for open requests: event streams end now, not at its
    timeout."""
    app[STREAMS].close_all()
