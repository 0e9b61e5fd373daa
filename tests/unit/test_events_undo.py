from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from volant.engine.events import EventBus
from volant.engine.undo import Undo
from volant.model import Event, EventType

pytestmark = pytest.mark.unit


def _event(n: int, vm: str = "a") -> Event:
    return Event(id=n, ts=datetime.now(UTC), type=EventType.VM_CREATED, vm=vm)


async def test_fan_out_and_filter() -> None:
    bus = EventBus()
    everyone = bus.subscribe()
    only_b = bus.subscribe(accept=lambda e: e.vm == "b")
    for n, vm in enumerate(["a", "b", "a"], start=1):
        bus.publish(_event(n, vm))
    bus.close()
    assert [e.id async for e in everyone] == [1, 2, 3]
    assert [e.id async for e in only_b] == [2]
    assert bus.subscriber_count == 0


async def test_slow_subscriber_is_dropped_not_waited_on() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=2)
    fast = bus.subscribe(maxsize=100)
    for n in range(1, 6):
        bus.publish(_event(n))
    assert slow.dropped
    assert bus.subscriber_count == 1
    received = [await fast.get() for _ in range(5)]
    assert [e.id for e in received if e] == [1, 2, 3, 4, 5]
    got = [e async for e in slow]
    assert len(got) < 5  # it ends instead of blocking the publisher


async def test_undo_runs_newest_first_and_survives_failures() -> None:
    done: list[str] = []
    undo = Undo()

    async def step(name: str) -> None:
        done.append(name)
        if name == "b":
            raise RuntimeError("boom")

    for name in "abc":
        undo.push(name, lambda name=name: step(name))  # type: ignore[misc]
    await undo.run()
    assert done == ["c", "b", "a"]
    await undo.run()
    assert done == ["c", "b", "a"]


async def test_undo_is_not_cut_by_cancellation() -> None:
    done: list[int] = []
    undo = Undo()

    async def slow() -> None:
        await asyncio.sleep(0.05)
        done.append(1)

    undo.push("slow", slow)
    task = asyncio.create_task(undo.run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert done == [1]
