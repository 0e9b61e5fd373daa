"""The SSE writer (volant.api.rest.sse) over loopback HTTP, fed by a real EventFeed on a real
store and bus; read back with the client's SSE parser. The whole REST route against a real
daemon is in tests/integration/test_events.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from volant.api.rest.sse import STREAMS, OpenStreams, last_event_id, send_feed
from volant.client.sse import SSEEvent, SSEParser
from volant.engine import EventBus, EventFeed, EventFilter
from volant.model import Event, EventType, InvalidArgument
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

STORE = web.AppKey("store", SqliteStore)
BUS = web.AppKey("bus", EventBus)
TRANSPORTS = web.AppKey("transports", list[asyncio.Transport])
HEARTBEAT = 0.1
QUEUE = 8


async def _stream(request: web.Request) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family != socket.AF_UNIX:
        # Loopback TCP autotunes its buffers to megabytes; small ones make a stalled reader
        # stall the writer after a few events, as a remote one does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    if request.transport is not None:
        request.app[TRANSPORTS].append(request.transport)
    after = last_event_id(request, default=None)
    f = EventFeed(
        request.app[STORE], request.app[BUS], after=after, filter=EventFilter(), queue_size=QUEUE
    )
    async with f:
        with request.app[STREAMS].track(f):
            return await send_feed(request, f, heartbeat=HEARTBEAT)


async def _end_streams(app: web.Application) -> None:
    app[STREAMS].close_all()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        app = web.Application()
        app.router.add_get("/events", _stream)
        app[STORE], app[BUS], app[STREAMS] = store, EventBus(), OpenStreams()
        app[TRANSPORTS] = []
        app.on_shutdown.append(_end_streams)
        srv = TestServer(app, host="127.0.0.1")
        await srv.start_server()
        try:
            yield srv
        finally:
            await srv.close()


async def emit(server: TestServer, payload: dict[str, str] | None = None) -> Event:
    event = await server.app[STORE].append_event(EventType.VM_CREATED, "web", payload)
    server.app[BUS].publish(event)
    return event


class Reader:
    """One SSE connection: its events, comments seen (heartbeats) and committed position."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.parser = SSEParser()
        self.raw = b""
        self.received: list[SSEEvent] = []

    async def events(self, count: int, timeout: float = 5) -> list[SSEEvent]:
        """The next count events (fewer if the stream ends first)."""
        start = len(self.received)
        async with asyncio.timeout(timeout):
            while len(self.received) - start < count:
                chunk = await self.resp.content.readany()
                if not chunk:
                    break
                self.raw += chunk
                self.received += self.parser.feed(chunk)
        return self.received[start:]


async def open_reader(
    session: aiohttp.ClientSession, server: TestServer, last_id: str = ""
) -> Reader:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    resp = await session.get(server.make_url("/events"), headers=headers)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    return Reader(resp)


async def test_framing_position_and_heartbeats(server: TestServer) -> None:
    await emit(server)
    async with aiohttp.ClientSession() as session:
        reader = await open_reader(session, server)
        await asyncio.sleep(HEARTBEAT * 3.5)
        sent = await emit(server, {"status": "creating"})
        (event,) = await reader.events(1)
        assert reader.raw.startswith(b"retry: 2000\nid: 1\n\n")
        assert reader.raw.count(b": heartbeat\n\n") >= 2
        assert (event.id, event.event) == ("2", "VM_CREATED")
        assert json.loads(event.data) == sent.to_dict()
        assert reader.parser.last_event_id == "2"

        replay = await open_reader(session, server, last_id="0")
        assert [e.id for e in await replay.events(2)] == ["1", "2"]


@pytest.mark.parametrize("value", ["12x", "-1", "1.5", "\u0661"])  # U+0661: isdigit() but not ASCII
def test_bad_last_event_id_is_refused(value: str) -> None:
    request = make_mocked_request("GET", "/", headers={"Last-Event-ID": value})
    with pytest.raises(InvalidArgument, match="Last-Event-ID"):
        last_event_id(request, None)


def test_absent_last_event_id_gives_the_default() -> None:
    assert last_event_id(make_mocked_request("GET", "/", headers={"Last-Event-ID": ""}), 7) == 7
    assert (
        last_event_id(make_mocked_request("GET", "/", headers={"Last-Event-ID": " 42 "}), 7) == 42
    )


async def test_slow_reader_is_cut_fast_reader_keeps_everything(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader that reads nothing stalls its writer; it is dropped once QUEUE events pile up,
    and its keep-alive connection is closed although a write to it is stuck. The fast reader
    gets every event meanwhile; the slow one, reconnecting from what it got, the rest once."""
    caplog.set_level(logging.INFO, logger="volant.api.rest.sse")
    total, pad = 300, "x" * 4000  # ~1.2 MB: far more than the buffers hold
    async with aiohttp.ClientSession() as session:
        slow = await open_reader(session, server)  # HTTP/1.1, keep-alive, chunked
        fast = await open_reader(session, server)
        fast_task = asyncio.create_task(fast.events(total, timeout=30))
        for _ in range(total):
            await emit(server, {"pad": pad})
        assert [int(e.id) for e in await fast_task] == list(range(1, total + 1))
        # Cut before it read a byte: its handler is gone and its connection closed at once,
        # what was buffered for it discarded (a graceful close would keep both until it reads).
        slow_transport = server.app[TRANSPORTS][0]
        async with asyncio.timeout(2):
            while len(server.app[STREAMS]) > 1 or slow_transport.get_write_buffer_size():
                await asyncio.sleep(0.01)
        assert slow_transport.is_closing()
        assert "fell behind" in caplog.text

        with contextlib.suppress(aiohttp.ClientPayloadError):  # the cut ends it mid-chunk
            await slow.events(total)
        got = [int(e.id) for e in slow.received]
        assert 0 < len(got) < total, "the slow reader was not cut"
        rest = await open_reader(session, server, slow.parser.last_event_id)
        more = [int(e.id) for e in await rest.events(total - len(got))]
        assert got + more == list(range(1, total + 1))


async def test_shutdown_ends_open_streams_at_once(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "state.db") as store:
        app = web.Application()
        app.router.add_get("/events", _stream)
        app[STORE], app[BUS], app[STREAMS] = store, EventBus(), OpenStreams()
        app[TRANSPORTS] = []
        app.on_shutdown.append(_end_streams)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        async with aiohttp.ClientSession() as session:
            reader = await open_reader(session, server)
            started = time.monotonic()
            await server.close()
            assert await reader.events(1) == []  # the stream ended cleanly, no event lost
            assert time.monotonic() - started < 2


def test_parser_position_moves_only_when_a_block_is_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 2000\nid: 5\n\n") == []  # no event, but a position
    assert parser.last_event_id == "5"
    assert [e.id for e in parser.feed(b"id: 6\nevent: VM_CREATED\ndata: {}\n\n")] == ["6"]
    assert parser.feed(b"id: 7\nevent: VM_RUNNING\ndata: {") == []  # cut off mid-event
    assert parser.last_event_id == "6"  # reconnecting from 6 gets event 7 again
