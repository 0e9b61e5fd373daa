"""Another front-end served inside the REST app at one path (the MCP endpoint).

The REST app knows it only as an aiohttp handler, the methods and media types it answers
with (so the OpenAPI document declares it and `api.check_openapi` accepts its answers) and a
`cleanup_ctx` that holds its resources while the app runs. Access control (API key,
api.allow_cidr) and the error middleware cover it like every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from .spec import Api, Body, Handler


@dataclass(frozen=True)
class Mount:
    path: str
    handler: Handler
    summary: str
    tag: str
    methods: tuple[str, ...]
    media: tuple[str, ...]
    cleanup_ctx: Callable[[web.Application], AsyncIterator[None]] | None = None

    def declare(self, api: Api) -> None:
        """One operation per method. Its answers are the mounted protocol's own business:
        any status, any of `media` with a free schema. A stream is exempt from the timeout
        (the mounted front-end bounds its own work)."""
        bodies = tuple(Body(media=media, schema={}) for media in self.media)
        for method in self.methods:
            api.add(
                method,
                self.path,
                self.handler,
                summary=f"{self.summary} ({method})",
                tag=self.tag,
                operation_id=f"{self.tag}_{method.lower()}",
                ok={202: ("Accepted; no body", None)},
                default=("The mounted protocol's answer", bodies),
                body_media=("application/json",) if method == "POST" else (),
                stream=True,
            )

    def attach(self, app: web.Application) -> None:
        if self.cleanup_ctx is not None:
            app.cleanup_ctx.append(self.cleanup_ctx)
