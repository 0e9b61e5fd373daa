"""The MCP endpoint: the official SDK's low-level server behind its Streamable HTTP transport,
served by an aiohttp handler (the REST app mounts it at /api/v1/mcp).

Stateless, with JSON answers: each POST carries one JSON-RPC message and gets its answer in
one JSON body. No session lives between requests, so there is nothing to expire, resume or
leak, a restart of volantd loses nothing, and every request passes the REST app's access
control afresh. The tools need no server-to-client requests, which only sessions could carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from volant.auth.polkit import Action, Authorizer, ProcessCaller, socket_peer
from volant.engine import Engine
from volant.model import ErrorCode, PermissionDenied, Unavailable, VolantError

from . import resources
from .asgi import serve_asgi
from .lifespan import in_own_task
from .tools import TOOLS, ToolDef, failure, success

PATH = "/api/v1/mcp"
METHODS = ("POST", "GET", "DELETE")
# What the transport answers with: JSON-RPC in JSON (or SSE, were it stateful); its own
# refusals of a malformed request (Content-Type, size) are text without a media type.
MEDIA = ("application/json", "text/event-stream", "application/octet-stream")
PEER = "volant.peer"
INSTRUCTIONS = (
    "Volant runs microVMs on this host. Each VM runs one installed plugin (its manifest is a "
    "resource). Tool errors carry Volant's stable error code; InvalidArgument names the "
    "argument to fix."
)
Context = ServerRequestContext[dict[str, Any]]


@dataclass(frozen=True)
class Peer:
    """Who sent an MCP request: the local process on the unix socket, None over TCP."""

    process: ProcessCaller | None


class McpEndpoint:
    """The MCP server of one daemon: `handle` answers requests, `cleanup_ctx` runs the SDK."""

    def __init__(self, engine: Engine, authorizer: Authorizer) -> None:
        self._engine = engine
        self._authorizer = authorizer
        self._tools: dict[str, ToolDef[Any]] = {tool.name: tool for tool in TOOLS}
        server: Server[dict[str, Any]] = Server(
            "volant",
            version=engine.version,
            title="Volant",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
        )
        max_body = max(1, engine.config.api_max_body_kb) * 1024
        self._manager = StreamableHTTPSessionManager(
            server, json_response=True, stateless=True, max_request_body_size=max_body
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler; access control (API key, allow_cidr) has run already."""
        if request.headers.get("Origin"):
            # A web page's request (DNS rebinding, a cross-site form): MCP clients send none.
            raise PermissionDenied(
                "requests from web pages (with an Origin header) may not use the MCP endpoint"
            )
        if request.method == "GET":
            return _no_stream()
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        peer = Peer(socket_peer(sock))
        return await serve_asgi(self._manager.handle_request, request, {PEER: peer})

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """Run the SDK's task group while the app runs (aiohttp `cleanup_ctx`)."""
        async with in_own_task(self._manager.run, name="mcp-session-manager"):
            yield

    # -- MCP handlers -------------------------------------------------------------------------

    async def _list_tools(
        self, _ctx: Context, _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool.describe() for tool in self._tools.values()])

    async def _call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self._tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        peer = _peer(ctx)

        async def authorize(action: Action) -> None:
            if peer is None:
                raise PermissionDenied("cannot tell who is calling; refusing a change")
            if peer.process is not None:
                await self._authorizer.check(peer.process, action)

        limit = self._engine.config.api_request_timeout
        try:
            async with asyncio.timeout(limit):
                result = await tool.call(
                    self._engine, params.arguments or {}, authorize, _caller(peer)
                )
        except VolantError as exc:
            return failure(exc)
        except TimeoutError:
            return failure(
                Unavailable(
                    f"{tool.name} took longer than {limit:g}s and was cut",
                    hint="api.request_timeout sets the limit; list_vms shows what happened",
                )
            )
        return success(result)

    async def _list_resources(
        self, _ctx: Context, _params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        try:
            return await resources.list_manifests(self._engine)
        except VolantError as exc:
            raise _protocol_error(exc) from exc

    async def _list_templates(
        self, _ctx: Context, _params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return resources.templates()

    async def _read_resource(
        self, _ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        try:
            return await resources.read_manifest(self._engine, params.uri)
        except VolantError as exc:
            raise _protocol_error(exc) from exc


def _peer(ctx: Context) -> Peer | None:
    """The peer the aiohttp handler put into the ASGI scope; None if it is missing."""
    request = ctx.request
    peer = request.scope.get(PEER) if isinstance(request, Request) else None
    return peer if isinstance(peer, Peer) else None


def _caller(peer: Peer | None) -> str:
    """Who asks, for the event log: the unix socket's uid, else the API key's holder."""
    if peer is not None and peer.process is not None:
        return f"mcp uid {peer.process.uid}"
    return "mcp api-key"


def _no_stream() -> web.Response:
    """GET would open a stream for messages the server starts; a stateless server starts none.
    The SDK would hold such a stream open forever; the specification allows 405 instead."""
    message = "Method Not Allowed: a stateless server has no stream of its own; POST messages"
    body = {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": types.INVALID_REQUEST, "message": message},
    }
    return web.json_response(body, status=405, headers={"Allow": "POST, DELETE"})


def _protocol_error(exc: VolantError) -> MCPError:
    code = types.INVALID_PARAMS if exc.code is ErrorCode.INVALID_ARGUMENT else types.INTERNAL_ERROR
    return MCPError(code, f"{exc.code.value}: {exc.message}", {"code": exc.code.value})
