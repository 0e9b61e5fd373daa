"""The event stream of a real volantd: SSE replay from Last-Event-ID, filters, heartbeats, a slow
subscriber cut while a fast one keeps up, `volar events` across a daemon restart, retention.

Guests start paused (runtime.start_paused): these tests need lifecycle events, not booted guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.daemon import (
    BIN,
    Daemon,
    build_guest,
    netns,
    running_daemon,
    start_daemon,
    stop_daemon,
)
from volant.client import VolantClient
from volant.client.sse import SSEEvent, SSEParser
from volant.model import EventType
from volant.store import SqliteStore

pytestmark = pytest.mark.integration

STREAM = "/api/v1/events/vms"
HEARTBEAT = 0.4
QUEUE = 8
SEEDED, PAD = 300, "x" * 4000  # ~1.2 MB of old events: more than a socket's buffers hold
SETTINGS = {
    "runtime.start_paused": True,
    "events.heartbeat_seconds": HEARTBEAT,
    "events.queue_size": QUEUE,
}
LIFECYCLE = ["VM_CREATED", "VM_STARTING", "VM_RUNNING", "VM_DELETED"]


async def seed(state_dir: Path) -> None:
    """Large events in the log before the daemon starts, as an earlier daemon left them."""
    state_dir.mkdir(parents=True)
    async with await SqliteStore.open(state_dir / "state.db") as store:
        for n in range(SEEDED):
            await store.append_event(EventType.VM_STOPPED, f"old{n % 7}", {"reason": PAD})


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def daemon(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("volantd-events")
    asyncio.run(seed(tmp / "state"))
    with running_daemon(tmp, SETTINGS) as d:
        yield d


@contextlib.asynccontextmanager
async def session(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=daemon.api.removeprefix("unix:"))
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


@dataclass
class Reader:
    """One SSE connection read with the client's parser; raw bytes kept for comments."""

    resp: aiohttp.ClientResponse
    parser: SSEParser = field(default_factory=SSEParser)
    raw: bytes = b""
    received: list[SSEEvent] = field(default_factory=list)

    async def take(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        start = len(self.received)
        async with asyncio.timeout(timeout):
            while len(self.received) - start < count:
                chunk = await self.resp.content.readany()
                if not chunk:
                    break
                self.raw += chunk
                self.received += self.parser.feed(chunk)
        return [json.loads(e.data) for e in self.received[start:]]


async def open_stream(
    s: aiohttp.ClientSession, query: str = "", last_id: str | None = None
) -> Reader:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    resp = await s.get(f"http://volantd{STREAM}{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    return Reader(resp)


async def cycle(client: VolantClient, name: str) -> None:
    """Create and delete a VM: VM_CREATED, VM_STARTING, VM_RUNNING, VM_DELETED."""
    await client.create_vm({"name": name, "plugin": "demo", "memory_mb": 96})
    await client.delete_vm(name)


def run(daemon: Daemon, scenario: Any) -> Any:
    async def main() -> Any:
        async with session(daemon) as s, VolantClient(daemon.api, timeout=60) as client:
            return await scenario(s, client)

    return asyncio.run(main())


def test_replay_from_last_event_id_then_live(daemon: Daemon) -> None:
    async def scenario(s: aiohttp.ClientSession, client: VolantClient) -> None:
        live = await open_stream(s, "?vm=rep1")
        await client.create_vm({"name": "rep1", "plugin": "demo", "memory_mb": 96})
        created, starting, running = await live.take(3)
        assert [created["type"], starting["type"], running["type"]] == LIFECYCLE[:3]
        # Reconnect after the first, as EventSource does: the rest come from the log, then
        # the delete comes live, once. ?after= loses to the header.
        again = await open_stream(s, "?vm=rep1&after=0", last_id=str(created["id"]))
        assert await again.take(2) == [starting, running]
        await client.delete_vm("rep1")
        (deleted,) = await again.take(1)
        assert (deleted["type"], deleted["id"] > running["id"]) == ("VM_DELETED", True)
        assert again.raw.startswith(f"retry: 2000\nid: {created['id']}\n\n".encode())
        assert await live.take(1) == [deleted]
        by_query = await open_stream(s, f"?vm=rep1&after={starting['id']}")
        assert await by_query.take(2) == [running, deleted]
        # The JSON list agrees with the stream.
        listed = await client.list_events(after=created["id"] - 1, vm="rep1")
        assert listed == [created, starting, running, deleted]

    run(daemon, scenario)


def test_filters_by_vm_and_types(daemon: Daemon) -> None:
    async def scenario(s: aiohttp.ClientSession, client: VolantClient) -> None:
        only = await open_stream(s, "?vm=filt1&type=VM_CREATED,VM_DELETED")
        typed = await open_stream(s, "?type=VM_RUNNING")
        await cycle(client, "filt2")  # another VM: nothing for `only`
        await cycle(client, "filt1")
        assert [(e["vm"], e["type"]) for e in await only.take(2)] == [
            ("filt1", "VM_CREATED"),
            ("filt1", "VM_DELETED"),
        ]
        assert [(e["vm"], e["type"]) for e in await typed.take(2)] == [
            ("filt2", "VM_RUNNING"),
            ("filt1", "VM_RUNNING"),
        ]
        # Filters in SQL: the newest VM_CREATED is found although thousands of rows precede it.
        listed = await client.list_events(vm="filt1", types=["VM_CREATED"])
        assert [e["type"] for e in listed] == ["VM_CREATED"]

    run(daemon, scenario)


def test_heartbeats_while_idle(daemon: Daemon) -> None:
    async def scenario(s: aiohttp.ClientSession, _client: VolantClient) -> bytes:
        reader = await open_stream(s, "?vm=nobody")
        with contextlib.suppress(TimeoutError):
            await reader.take(1, timeout=HEARTBEAT * 3.5)
        return reader.raw

    raw = run(daemon, scenario)
    assert raw.startswith(b"retry: 2000\nid: ")
    assert raw.count(b": heartbeat\n\n") >= 3


@pytest.mark.parametrize(
    ("query", "header", "field"),
    [
        ("?type=VM_EXPLODED", None, "type"),
        ("?type=VM_CREATED,", None, "type"),
        ("?vm=Not_A_Name", None, "name"),
        ("?after=-1", None, "after"),
        ("?colour=red", None, "colour"),
        ("", "twelve", "Last-Event-ID"),
        ("", "99999999", "Last-Event-ID"),  # ahead of the log: was the state reset?
    ],
)
def test_bad_requests_are_400(daemon: Daemon, query: str, header: str | None, field: str) -> None:
    async def scenario(s: aiohttp.ClientSession, _client: VolantClient) -> tuple[int, str, Any]:
        headers = {"Last-Event-ID": header} if header else {}
        async with s.get(f"http://volantd{STREAM}{query}", headers=headers) as resp:
            return resp.status, resp.content_type, await resp.json(content_type=None)

    status, ctype, problem = run(daemon, scenario)
    assert (status, ctype, problem["code"]) == (400, "application/problem+json", "InvalidArgument")
    assert field in problem.get("field", "") + problem["detail"]


def test_slow_subscriber_is_cut_while_a_fast_one_keeps_up(daemon: Daemon) -> None:
    """The slow reader asks for the whole log (~1.2 MB) and reads nothing: its writer stalls,
    the live events pile up in its queue, and past events.queue_size it is cut. The fast
    reader receives every live event meanwhile; the slow one, reconnecting from the last event
    it got, receives everything it missed, exactly once."""

    async def scenario(s: aiohttp.ClientSession, client: VolantClient) -> None:
        slow = await open_stream(s, last_id="0")
        fast = await open_stream(s)
        for n in range(3):  # 12 live events > QUEUE
            await cycle(client, f"slow{n}")
        live = await fast.take(12)
        assert [e["type"] for e in live] == LIFECYCLE * 3
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await slow.take(10_000, timeout=20)  # what was in the pipe, then the cut
        got = [int(e.id) for e in slow.received]
        assert 0 < len(got) < SEEDED + 12, "the slow reader was not cut"
        newest = live[-1]["id"]
        resumed = await open_stream(s, last_id=slow.parser.last_event_id)
        rest = [e["id"] for e in await resumed.take(newest - len(got))]
        everything = [e["id"] for e in await client.list_events(limit=10_000)]
        assert len(everything) > SEEDED
        assert got + rest == everything
        status = await client.system_status()
        assert status["event_subscribers"] >= 2  # fast and resumed, still served

    run(daemon, scenario)
    assert "closing the event stream of a unix-socket caller: it fell behind" in daemon.log_text()


# -- volar events, a daemon restart and retention, on a daemon of their own -------------------


@dataclass
class Restartable:
    ns: str
    tmp: Path
    settings: dict[str, Any]
    daemon: Daemon

    def restart(self) -> None:
        stop_daemon(self.daemon, delete_vms=False)
        self.daemon = start_daemon(self.ns, self.tmp, self.settings)


@pytest.fixture
def restartable(guest: Path, tmp_path: Path) -> Iterator[Restartable]:
    settings = {**SETTINGS, "events.max_rows": 6}
    with netns() as ns:
        holder = Restartable(ns, tmp_path, settings, start_daemon(ns, tmp_path, settings))
        try:
            yield holder
        finally:
            stop_daemon(holder.daemon)


def subscribers(daemon: Daemon) -> int:
    return int(daemon.call(lambda c: c.system_status())["event_subscribers"])


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_volar_events_follows_live_and_across_a_restart(restartable: Restartable) -> None:
    d = restartable.daemon
    before = subscribers(d)
    volar = subprocess.Popen(
        [str(BIN / "volar"), "--api", d.api, "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: subscribers(d) > before)
        d.call(lambda c: cycle(c, "cli1"))
        restartable.restart()  # volar loses its stream, then volantd, then reconnects
        # Created before volar is back: the replay from its Last-Event-ID brings it.
        restartable.daemon.call(lambda c: cycle(c, "cli2"))
        lines = [json.loads(volar.stdout.readline()) for _ in range(8)]  # type: ignore[union-attr]
        assert [(e["vm"], e["type"]) for e in lines] == [
            (vm, t) for vm in ("cli1", "cli2") for t in LIFECYCLE
        ]
        ids = [e["id"] for e in lines]
        assert ids == sorted(set(ids))  # no repeats
        volar.send_signal(signal.SIGINT)
        _out, err = volar.communicate(timeout=10)
    finally:
        if volar.poll() is None:
            volar.kill()
    assert volar.returncode == 130
    assert "reconnecting after event" in err
    assert "Traceback" not in err


def test_volar_events_human_lines_and_filters(restartable: Restartable) -> None:
    d = restartable.daemon
    d.call(lambda c: cycle(c, "hum1"))
    first = d.call(lambda c: c.list_events(vm="hum1"))[0]["id"]
    volar = subprocess.Popen(
        [
            *(str(BIN / "volar"), "--api", d.api, "events"),
            *("--since", str(first - 1), "--vm", "hum1", "--type", "vm_created,VM_RUNNING"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [volar.stdout.readline().split() for _ in range(2)]  # type: ignore[union-attr]
        volar.send_signal(signal.SIGINT)
        _out, err = volar.communicate(timeout=10)
    finally:
        if volar.poll() is None:
            volar.kill()
    assert [line[2:4] for line in lines] == [["VM_CREATED", "hum1"], ["VM_RUNNING", "hum1"]]
    assert "status=running" in lines[1]
    assert volar.returncode == 130
    assert err == ""
    kept = d.volar("events", "--no-follow", "--vm", "hum1", "--since", str(first - 1), "--json")
    assert kept.returncode == 0, kept.stderr
    assert [json.loads(line)["type"] for line in kept.stdout.splitlines()] == list(LIFECYCLE)
    bad = d.volar("events", "--type", "VM_EXPLODED")
    assert bad.returncode == 1
    assert "unknown event type 'VM_EXPLODED'" in bad.stderr


def test_retention_prunes_at_start_to_max_rows(restartable: Restartable) -> None:
    d = restartable.daemon
    for n in range(3):
        d.call(lambda c, n=n: cycle(c, f"ret{n}"))
    assert len(d.call(lambda c: c.list_events())) == 12
    restartable.restart()
    d = restartable.daemon
    wait_for(lambda: len(d.call(lambda c: c.list_events())) == 6)
    kept = d.call(lambda c: c.list_events())
    assert [(e["vm"], e["type"]) for e in kept] == [
        *[("ret1", t) for t in LIFECYCLE[2:]],
        *[("ret2", t) for t in LIFECYCLE],
    ]
    assert "pruned 6 events from the event log" in d.log_text()
    assert os.path.getsize(restartable.tmp / "state" / "state.db") > 0
