"""The event log on a real SQLite file: filters in SQL, pruning, and the replay-then-live feed
over the real store and EventBus (persist, then publish, as the engine does)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from volant.config import Config, load_config
from volant.engine import EventBus, EventFeed
from volant.engine import feed as feed_module
from volant.engine.feed import EventFilter
from volant.engine.journal import EventVerbs
from volant.model import Event, EventType, InvalidArgument
from volant.store import SqliteStore
from volant.store import sqlite as sqlite_module

pytestmark = pytest.mark.unit

CREATED, RUNNING, DELETED = EventType.VM_CREATED, EventType.VM_RUNNING, EventType.VM_DELETED


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with await SqliteStore.open(db_path) as store:
        yield store


async def emit(store: SqliteStore, bus: EventBus, type: EventType, vm: str) -> Event:
    """What the engine does for every event: persist it, then publish it."""
    event = await store.append_event(type, vm)
    bus.publish(event)
    return event


def age(db_path: Path, ids: range, days: float) -> None:
    """Backdate events through a separate connection, as an operator's sqlite3 shell would."""
    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    with sqlite3.connect(db_path) as conn:
        conn.executemany("UPDATE events SET ts = ? WHERE id = ?", [(stamp, i) for i in ids])


def ids(events: list[Event]) -> list[int]:
    return [e.id for e in events]


# -- store: filters and pruning ---------------------------------------------------------------


async def test_filters_apply_before_the_limit(store: SqliteStore) -> None:
    for n in range(10):
        await store.append_event(CREATED if n % 2 else RUNNING, "web" if n < 8 else "db")
    assert ids(await store.list_events(0, 2, vm="db")) == [9, 10]
    assert ids(await store.list_events(0, 3, types=[CREATED])) == [2, 4, 6]
    assert ids(await store.list_events(4, 10, vm="web", types={RUNNING})) == [5, 7]
    assert ids(await store.list_events(0, 10, types=[CREATED, RUNNING], vm="db")) == [9, 10]
    assert await store.list_events(0, 10, vm="nobody") == []
    assert len(await store.list_events()) == 10  # old callers: positional, no filter


async def test_prune_keeps_the_newest_rows(store: SqliteStore) -> None:
    for _ in range(8):
        await store.append_event(CREATED, "web")
    assert await store.prune_events(keep_rows=3) == 5
    assert ids(await store.list_events()) == [6, 7, 8]
    assert await store.prune_events(keep_rows=3) == 0
    assert await store.prune_events() == 0
    with pytest.raises(InvalidArgument):
        await store.prune_events(keep_rows=-1)


async def test_prune_by_age_and_rows_together(store: SqliteStore, db_path: Path) -> None:
    for _ in range(10):
        await store.append_event(CREATED, "web")
    age(db_path, range(1, 5), days=40)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert await store.prune_events(older_than=cutoff) == 4
    assert ids(await store.list_events()) == [5, 6, 7, 8, 9, 10]
    age(db_path, range(9, 10), days=40)  # out of order in time: age still decides alone
    assert await store.prune_events(older_than=cutoff, keep_rows=4) == 3
    assert ids(await store.list_events()) == [7, 8, 10]
    with pytest.raises(ValueError, match="timezone"):
        await store.prune_events(older_than=datetime.now())


async def test_prune_in_chunks_and_ids_never_come_back(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "PRUNE_CHUNK", 3)
    for _ in range(11):
        await store.append_event(CREATED, "web")
    assert await store.prune_events(keep_rows=0) == 11
    assert await store.list_events() == []
    assert await store.last_event_id() == 11
    later = await store.append_event(DELETED, "web")
    assert later.id == 12  # AUTOINCREMENT: a reader's Last-Event-ID stays meaningful


async def test_last_event_id_and_the_age_index(store: SqliteStore, db_path: Path) -> None:
    assert await store.last_event_id() == 0
    await store.append_event(CREATED, "web")
    assert await store.last_event_id() == 1
    with sqlite3.connect(db_path) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN DELETE FROM events WHERE ts < 'x'").fetchall()
    assert "events_ts" in str(plan)


# -- the feed: replay, then live, no gap, no repeat -------------------------------------------


def feed(
    store: SqliteStore, bus: EventBus, after: int | None, size: int = 16, **kw: Any
) -> EventFeed:
    return EventFeed(store, bus, after=after, filter=EventFilter(**kw), queue_size=size)


async def take(f: EventFeed, count: int) -> list[int]:
    got = []
    for _ in range(count):
        event = await asyncio.wait_for(f.next(), 5)
        assert event is not None
        got.append(event.id)
    return got


async def nothing_more(f: EventFeed) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(f.next(), 0.05)


async def test_replay_then_live_without_gap_or_repeat(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "REPLAY_PAGE", 3)  # replay crosses several pages
    bus = EventBus()
    for _ in range(7):
        await emit(store, bus, CREATED, "web")
    async with feed(store, bus, after=2) as f:
        # Persisted while the feed is open but published only after the replay has read it:
        # it must come once, from the replay, not again from the live queue.
        straddling = await store.append_event(RUNNING, "web")
        assert await take(f, 6) == [3, 4, 5, 6, 7, 8]
        bus.publish(straddling)
        await emit(store, bus, DELETED, "web")
        assert await take(f, 1) == [9]
        assert f.position == 9
        await nothing_more(f)
    assert bus.subscriber_count == 0


async def test_without_a_position_it_starts_at_the_newest(store: SqliteStore) -> None:
    bus = EventBus()
    for _ in range(3):
        await emit(store, bus, CREATED, "web")
    async with feed(store, bus, after=None) as f:
        assert f.position == 3
        await emit(store, bus, RUNNING, "web")
        assert await take(f, 1) == [4]


async def test_a_position_ahead_of_the_log_is_refused(store: SqliteStore) -> None:
    bus = EventBus()
    await emit(store, bus, CREATED, "web")
    with pytest.raises(InvalidArgument, match="ahead of the event log"):
        async with feed(store, bus, after=5):
            pass
    assert bus.subscriber_count == 0


async def test_filters_hold_in_replay_and_live(store: SqliteStore) -> None:
    bus = EventBus()
    await emit(store, bus, CREATED, "web")
    await emit(store, bus, CREATED, "db")
    await emit(store, bus, RUNNING, "db")
    async with feed(store, bus, after=0, vm="db", types=frozenset({RUNNING, DELETED})) as f:
        assert await take(f, 1) == [3]
        await emit(store, bus, DELETED, "web")
        await emit(store, bus, CREATED, "db")
        await emit(store, bus, DELETED, "db")
        assert await take(f, 1) == [6]
        await nothing_more(f)


async def test_a_slow_reader_is_dropped_and_misses_nothing_on_reconnection(
    store: SqliteStore,
) -> None:
    bus = EventBus()
    async with feed(store, bus, after=None, size=2) as slow, feed(store, bus, after=None) as fast:
        for _ in range(5):
            await emit(store, bus, CREATED, "web")
        assert await asyncio.wait_for(slow.wait_ended(), 1) is True
        assert slow.dropped
        assert not fast.dropped
        assert await slow.next() is None
        assert await take(fast, 5) == [1, 2, 3, 4, 5]
        await nothing_more(fast)
    async with feed(store, bus, after=slow.position) as again:
        assert await take(again, 5) == [1, 2, 3, 4, 5]
        await nothing_more(again)


async def test_next_survives_cancellation(store: SqliteStore) -> None:
    bus = EventBus()
    await emit(store, bus, CREATED, "web")
    async with feed(store, bus, after=0) as f:
        assert await take(f, 1) == [1]
        for _ in range(3):  # heartbeat timeouts cancel a waiting next(); nothing is lost
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(f.next(), 0.01)
        await emit(store, bus, RUNNING, "web")
        assert await take(f, 1) == [2]


async def test_closing_the_bus_ends_the_feed_undropped(store: SqliteStore) -> None:
    bus = EventBus()
    async with feed(store, bus, after=None) as f:
        bus.close()
        assert await f.next() is None
        assert await f.wait_ended() is False


# -- retention as the engine applies it -------------------------------------------------------


class Journal(EventVerbs):
    """The engine's event verbs on their own: real config, store and bus."""

    def __init__(self, config: Config, store: SqliteStore) -> None:
        self.config = config
        self.store = store
        self.bus = EventBus()


def config(tmp_path: Path, **env: str) -> Config:
    return load_config([], env={"HOME": str(tmp_path), **env})


async def test_retention_applies_days_and_rows(
    store: SqliteStore, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(10):
        await store.append_event(CREATED, "web")
    age(db_path, range(1, 3), days=8)
    journal = Journal(
        config(tmp_path, VOLANT_EVENTS_RETENTION_DAYS="7", VOLANT_EVENTS_MAX_ROWS="5"), store
    )
    with caplog.at_level(logging.INFO, logger="volant.engine.journal"):
        assert await journal._prune_events() == 5
    assert ids(await store.list_events()) == [6, 7, 8, 9, 10]
    assert "pruned 5 events" in caplog.text
    forever = Journal(
        config(tmp_path, VOLANT_EVENTS_RETENTION_DAYS="0", VOLANT_EVENTS_MAX_ROWS="0"), store
    )
    age(db_path, range(6, 11), days=1000)
    assert await forever._prune_events() == 0


async def test_list_and_follow_check_the_vm_name(store: SqliteStore, tmp_path: Path) -> None:
    journal = Journal(config(tmp_path), store)
    await store.append_event(CREATED, "web")
    assert ids(await journal.list_events(vm="web", types=[CREATED])) == [1]
    with pytest.raises(InvalidArgument):
        await journal.list_events(vm="Not_A_Name")
    with pytest.raises(InvalidArgument):
        journal.follow_events(vm="-bad")
    async with journal.follow_events(0, types=[CREATED]) as f:
        assert await take(f, 1) == [1]
