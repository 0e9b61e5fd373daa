"""The client's Server-Sent Events decoder, and its streaming and pass-through calls against
an aiohttp server on a unix socket and on loopback TCP (a stand-in for volantd's routes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from volant.client import ApiError, VolantClient
from volant.client.http import Reply
from volant.client.sse import MAX_LINE_BYTES, SSEEvent, SSEParser

pytestmark = pytest.mark.unit

LINES = [
    {"seq": 1, "ts": 1700000000.25, "stream": "stdout", "line": "hello"},
    {"seq": 2, "ts": 1700000001.5, "stream": "stderr", "line": "wörld"},
]


def _feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_events_comments_and_fields() -> None:
    stream = (
        b": keepalive\n\n"
        b"data: one\n\n"
        b'event: log\nid: 7\ndata: {"a": 1}\n\n'
        b"data:no-space\n\n"
        b"data: first\ndata: second\n\n"
        b"retry: 1000\nunknown: x\n\n"
    )
    events = SSEParser().feed(stream)
    assert events == [
        SSEEvent("one"),
        SSEEvent('{"a": 1}', "log", "7"),
        SSEEvent("no-space", id="7"),
        SSEEvent("first\nsecond", id="7"),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_byte_by_byte(eol: bytes) -> None:
    stream = eol.join([b"\xef\xbb\xbfdata: caf\xc3\xa9", b"", b": ping", b"", b"data: 2", b"", b""])
    parser = SSEParser()
    events = _feed_all(parser, [stream[i : i + 1] for i in range(len(stream))])
    assert [e.data for e in events] == ["café", "2"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    # Were this LF a line of its own, it would dispatch "a" alone.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\r") == [SSEEvent("a\nb")]
    assert parser.feed(b"\ndata: c\n\n") == [SSEEvent("c")]


def test_unfinished_event_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: cut off\n") == [SSEEvent("complete")]


def test_endless_line_is_refused() -> None:
    parser = SSEParser()
    with pytest.raises(ValueError, match="longer than"):
        parser.feed(b"data: " + b"x" * MAX_LINE_BYTES)


# A stand-in for volantd's routes: the real log stream needs a guest agent (system tests).
QUERIES = web.AppKey("queries", list[dict[str, str]])
ACTIONS = web.AppKey("actions", list[tuple[str, bytes]])
INSTALLS = web.AppKey("installs", list[dict[str, Any]])


async def _logs(request: web.Request) -> web.StreamResponse:
    request.app[QUERIES].append(dict(request.query))
    if request.match_info["name"] == "ghost":
        return web.json_response(
            {"code": "NotFound", "detail": "no VM named 'ghost'", "hint": "volar vms list"},
            status=404,
            content_type="application/problem+json",
        )
    if request.query.get("follow") != "true":
        return web.json_response({"lines": LINES[: int(request.query.get("limit", "9"))]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b": keepalive\n\n")
    for line in LINES:
        raw = f"event: log\ndata: {json.dumps(line)}\n\n".encode()
        # Split mid-line so the client must reassemble events across network chunks.
        await resp.write(raw[:9])
        await asyncio.sleep(0.05)
        await resp.write(raw[9:])
    await resp.write_eof()
    return resp


async def _action(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[ACTIONS].append((request.content_type, body))
    action = request.match_info["action"]
    if action == "missing":
        return web.json_response(
            {"code": "NotFound", "detail": "no action 'missing'"},
            status=404,
            content_type="application/problem+json",
        )
    if action == "broken":
        return web.Response(status=500, text="workload fell over", content_type="text/plain")
    return web.Response(
        body=b'{"echo": ' + (body or b"null") + b"}", content_type="application/json"
    )


async def _install(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[INSTALLS].append(body)
    return web.json_response({"name": "hello", "manifest": {}}, status=201)


def _app() -> web.Application:
    app = web.Application()
    app[QUERIES], app[ACTIONS], app[INSTALLS] = [], [], []
    app.router.add_get("/api/v1/vms/{name}/logs", _logs)
    app.router.add_post("/api/v1/vms/{name}/actions/{action}", _action)
    app.router.add_post("/api/v1/plugins/{name}/actions/{action}", _action)
    app.router.add_post("/api/v1/plugins", _install)
    return app


@pytest.fixture
async def unix_api(tmp_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    app = _app()
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "api.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        yield f"unix:{sock}", app
    finally:
        await runner.cleanup()


async def _follow(base: str, name: str = "web", limit: int | None = None) -> list[dict[str, Any]]:
    async with VolantClient(base, timeout=5) as client:
        return [line async for line in client.follow_vm_logs(name, limit)]


async def test_follow_logs_over_unix_socket(unix_api: tuple[str, web.Application]) -> None:
    base, app = unix_api
    assert await _follow(base, limit=5) == LINES
    assert app[QUERIES] == [{"follow": "true", "limit": "5"}]


async def test_follow_logs_over_tcp() -> None:
    app = _app()
    async with TestServer(app) as server:
        assert await _follow(str(server.make_url("")).rstrip("/")) == LINES
    assert app[QUERIES] == [{"follow": "true"}]


async def test_follow_and_recent_logs_report_problems(
    unix_api: tuple[str, web.Application],
) -> None:
    base, _app = unix_api
    with pytest.raises(ApiError) as err:
        await _follow(base, "ghost")
    assert (err.value.status, err.value.code, err.value.hint) == (404, "NotFound", "volar vms list")
    async with VolantClient(base) as client:
        assert await client.vm_logs("web", 1) == LINES[:1]
        with pytest.raises(ApiError, match="no VM named"):
            await client.vm_logs("ghost")


async def test_actions_pass_the_workload_answer_through(
    unix_api: tuple[str, web.Application],
) -> None:
    base, app = unix_api
    async with VolantClient(base) as client:
        ok = await client.vm_action("web", "echo", b'{"x": 1}')
        assert ok == Reply(200, "application/json", b'{"echo": {"x": 1}}')
        status, ctype, body = await client.plugin_action("hello", "broken")
        assert (status, ctype, body) == (500, "text/plain", b"workload fell over")
        with pytest.raises(ApiError) as err:
            await client.vm_action("web", "missing")
        assert (err.value.status, err.value.code) == (404, "NotFound")
    assert app[ACTIONS][0] == ("application/json", b'{"x": 1}')
    assert app[ACTIONS][1][1] == b""


async def test_install_bodies(unix_api: tuple[str, web.Application]) -> None:
    base, app = unix_api
    async with VolantClient(base) as client:
        await client.install_plugin(
            manifest_text="{}", signature="c2ln", origin="file:///m/manifest.json"
        )
        await client.install_plugin(url="https://example.com/m.json", replace=True)
        with pytest.raises(ValueError, match="exactly one"):
            await client.install_plugin()
        with pytest.raises(ValueError, match="exactly one"):
            await client.install_plugin(manifest_text="{}", url="https://example.com/m.json")
    assert app[INSTALLS] == [
        {
            "manifest": "{}",
            "signature": "c2ln",
            "origin": "file:///m/manifest.json",
            "replace": False,
        },
        {"url": "https://example.com/m.json", "replace": True},
    ]


async def test_unreachable_daemon_has_a_hint(tmp_path: Path) -> None:
    async with VolantClient(f"unix:{tmp_path / 'none.sock'}") as client:
        with pytest.raises(ApiError) as err:
            await client.list_plugins()
        assert err.value.code == "Unreachable"
        assert "volantd" in err.value.hint
        with pytest.raises(ApiError, match="cannot reach"):
            await _follow(client.base)
