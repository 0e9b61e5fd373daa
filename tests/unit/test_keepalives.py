"""A log follow sends keepalives while the workload is quiet, and a keepalive never ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from volant.api.rest.plugins import with_keepalives

pytestmark = pytest.mark.unit


async def quiet_then(lines: list[str], pause: float) -> AsyncIterator[str]:
    for line in lines:
        await asyncio.sleep(pause)
        yield line


async def test_quiet_stretches_become_keepalives_and_the_source_survives_them() -> None:
    items = [item async for item in with_keepalives(quiet_then(["a", "b"], 0.25), 0.1)]
    assert [i for i in items if i is not None] == ["a", "b"]
    assert items.count(None) >= 2
    assert items[-1] == "b"


async def test_errors_of_the_source_reach_the_reader() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "a"
        raise LookupError("agent gone")

    ticks = with_keepalives(broken(), 1.0)
    assert await anext(ticks) == "a"
    with pytest.raises(LookupError, match="agent gone"):
        await anext(ticks)
