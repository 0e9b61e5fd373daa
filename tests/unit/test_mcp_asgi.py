"""The ASGI bridge (volant.api.mcp.asgi) on real aiohttp servers, loopback TCP and a unix socket:
small ASGI applications written here, and the MCP SDK's own transport in its streaming (SSE)
and JSON modes driven by the SDK's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from yarl import URL

from volant.api.mcp.asgi import ASGIApp, Message, Receive, Scope, Send, serve_asgi

pytestmark = pytest.mark.unit

# What the handler gave the middlewares: the answer's class and whether it had gone out.
SEEN = web.AppKey("seen", list[tuple[type[web.StreamResponse], bool]])


@contextlib.asynccontextmanager
async def serving(aio: web.Application) -> AsyncIterator[URL]:
    """`aio` on a loopback port, with the runner volantd uses (handlers are not cancelled when
    their client goes; aiohttp's TestServer would cancel them)."""
    runner = web.AppRunner(aio)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield URL.build(scheme="http", host=host, port=port)
    finally:
        await runner.cleanup()


def bridged(app: ASGIApp, *, max_body: int = 1024**2, **extra: Any) -> web.Application:
    """An aiohttp app whose every route is `app`; a middleware records what the handler gave."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except Exception as exc:
            return web.Response(status=500, text=f"bridge raised {type(exc).__name__}: {exc}")
        request.app[SEEN].append((type(response), response.prepared))
        return response

    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve_asgi(app, request, extra)

    aio = web.Application(middlewares=[record], client_max_size=max_body)
    aio[SEEN] = []
    aio.router.add_route("*", "/{tail:.*}", handle)
    return aio


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what it was given: the scope (minus bytes) and the body."""
    message = await receive()
    shown = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string")}
    shown["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
    shown["raw_path"] = scope["raw_path"].decode()
    shown["query_string"] = scope["query_string"].decode()
    shown["body"] = message["body"].decode()
    shown["more_body"] = message["more_body"]
    body = json.dumps(shown).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-twice", b"1"),
                (b"x-twice", b"2"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body[:10], "more_body": True})
    await send({"type": "http.response.body", "body": body[10:]})


async def test_scope_body_and_a_whole_answer_over_tcp() -> None:
    aio = bridged(echo, who="tester")
    async with serving(aio) as base, aiohttp.ClientSession() as http:
        url = URL(f"{base}/api/v1/mcp%2Fx?a=1&b=%20", encoded=True)
        async with http.post(url, data=b"hello", headers={"X-Thing": "Yes"}) as resp:
            assert resp.status == 201
            assert resp.headers.getall("X-Twice") == ["1", "2"]
            assert resp.headers.get("Connection") != "close"
            seen = await resp.json()
    assert seen["type"] == "http"
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/v1/mcp/x"
    assert seen["raw_path"] == "/api/v1/mcp%2Fx"
    assert seen["query_string"] == "a=1&b=%20"
    assert seen["body"] == "hello"
    assert seen["more_body"] is False
    assert ["x-thing", "Yes"] in seen["headers"]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["server"] == ["127.0.0.1", url.port]
    assert seen["who"] == "tester"
    # Of declared length, so the middlewares got a plain Response they could still replace.
    assert aio[SEEN] == [(web.Response, False)]


async def test_scope_over_a_unix_socket(tmp_path: Path) -> None:
    runner = web.AppRunner(bridged(echo))
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    try:
        connector = aiohttp.UnixConnector(path=sock)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get("http://localhost/x") as resp,
        ):
            seen = await resp.json()
    finally:
        await runner.cleanup()
    assert seen["server"] == [sock, None]
    assert seen["client"] in (["", None], None)
    assert seen["body"] == ""


async def test_body_over_the_limit_is_413_before_the_app_runs() -> None:
    calls: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)
        await echo(scope, receive, send)

    aio = bridged(app, max_body=100)
    async with (
        serving(aio) as base,
        aiohttp.ClientSession() as http,
        http.post(base, data=b"x" * 101) as resp,
    ):
        assert resp.status == 500  # the recording middleware's answer to the raise
        assert "HTTPRequestEntityTooLarge" in await resp.text()
    assert calls == []


def streamer(go_on: asyncio.Event, disconnected: asyncio.Event) -> ASGIApp:
    """Headers at once, a first part, waits for `go_on`, a second part, then listens for the
    client to go (as sse-starlette does)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()

    return app


async def test_a_stream_is_written_as_it_comes_and_a_departure_is_heard() -> None:
    go_on, disconnected = asyncio.Event(), asyncio.Event()
    aio = bridged(streamer(go_on, disconnected))
    async with serving(aio) as base, aiohttp.ClientSession() as http:
        resp = await http.get(base / "events")
        # Headers arrived although the application has sent no body yet.
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        go_on.set()
        assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
        started = time.monotonic()
        resp.close()  # the client goes away mid-stream
        await asyncio.wait_for(disconnected.wait(), 5)
        assert time.monotonic() - started < 2
    assert aio[SEEN] == [(web.StreamResponse, True)]


async def test_receive_after_the_body_ends_when_the_app_has_answered() -> None:
    """A listener for http.disconnect still waiting when the application returns hears it."""
    heard: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

        async def listen() -> None:
            heard.append(await receive())

        listener = asyncio.ensure_future(listen())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        scope["state"]["listener"] = listener

    scopes: list[Scope] = []

    async def keep(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await app(scope, receive, send)

    async with serving(bridged(keep)) as base, aiohttp.ClientSession() as http:
        async with http.get(base) as resp:
            assert resp.status == 204
        await asyncio.wait_for(scopes[0]["state"]["listener"], 5)
    assert heard == [{"type": "http.disconnect"}]


async def test_failures_before_and_during_an_answer() -> None:
    async def fails_at_once(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("broken app")

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def fails_mid_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("broken stream")

    async def body_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.body", "body": b"x"})

    async with aiohttp.ClientSession() as http:
        for app, status, text in (
            (fails_at_once, 500, "ValueError: broken app"),
            (silent, 500, "returned without answering"),
            (body_first, 500, "body before starting"),
            (fails_mid_stream, 200, "part"),  # cut short where it stopped; nothing else to do
        ):
            async with serving(bridged(app)) as base, http.get(base) as resp:
                assert resp.status == status
                assert text in await resp.text()


# -- the MCP SDK's transport through the bridge ----------------------------------------------


async def _add(
    _ctx: ServerRequestContext[dict[str, Any]], params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    total = int(args["a"]) + int(args["b"])
    return types.CallToolResult(
        content=[types.TextContent(text=str(total))], structured_content={"sum": total}
    )


async def _tools(
    _ctx: ServerRequestContext[dict[str, Any]], _params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    return types.ListToolsResult(tools=[types.Tool(name="add", input_schema=schema)])


@contextlib.asynccontextmanager
async def cancelling_server(aio: web.Application) -> AsyncIterator[URL]:
    """aiohttp's TestServer, which cancels the handler of a client that leaves."""
    async with TestServer(aio) as server:
        yield server.make_url("/")


@pytest.mark.parametrize(
    ("mode", "serve"),
    [
        ("sse-sessions", serving),
        ("json-stateless", serving),
        ("sse-sessions", cancelling_server),
    ],
    ids=["sse-sessions", "json-stateless", "sse-sessions-cancelling-server"],
)
async def test_the_sdk_client_through_the_bridge(
    mode: str, serve: Callable[[web.Application], contextlib.AbstractAsyncContextManager[URL]]
) -> None:
    """The SDK's Streamable HTTP transport behind the bridge: stateful with SSE answers (GET
    stream, DELETE at the end), or stateless with JSON answers as volantd runs it. The SDK
    client leaves each SSE answer once it has its response, which must not cut the session
    short even where aiohttp cancels the handler then."""
    server: Server[dict[str, Any]] = Server("test", on_list_tools=_tools, on_call_tool=_add)
    stateless = mode == "json-stateless"
    manager = StreamableHTTPSessionManager(server, json_response=stateless, stateless=stateless)
    async with (
        manager.run(),
        serve(bridged(manager.handle_request)) as base,
        httpx2.AsyncClient(timeout=10) as http,
        streamable_http_client(str(base / "mcp"), http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        assert init.server_info.name == "test"
        assert [tool.name for tool in (await session.list_tools()).tools] == ["add"]
        results = await asyncio.gather(
            *(session.call_tool("add", {"a": n, "b": 1}) for n in range(5))
        )
        assert [r.structured_content for r in results] == [{"sum": n + 1} for n in range(5)]
