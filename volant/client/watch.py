"""One VM's events, subscribed before the caller acts on the VM, so none of them is missed.

`volar vms create` opens this first and sends its request only once the daemon has accepted
the stream: the daemon subscribes a stream before it answers it, so every event the request
causes arrives here. A stream that cannot be opened is no failure: the caller goes on without
events (`VMWatch.live` is False) and learns the outcome from its request's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from volant.client.errors import ApiError, json_object
from volant.client.follow import EVENTS_PATH
from volant.client.http import VolantClient

OPEN_TIMEOUT = 5.0


class VMWatch:
    """The events (dicts: id, ts, type, vm, payload) of one VM, in order, from its opening."""

    def __init__(self) -> None:
        self.live = False
        """True once the daemon accepted the stream."""
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._ended = False

    async def next(self) -> dict[str, Any] | None:
        """The next event; None once the stream has ended (and for ever after)."""
        if self._ended:
            return None
        event = await self._queue.get()
        self._ended = event is None
        return event

    async def _pump(self, client: VolantClient, name: str, opened: asyncio.Event) -> None:
        def accepted() -> None:
            self.live = True
            opened.set()

        # A stream that fails ends like one that closes: the caller has its request's answer.
        try:
            with contextlib.suppress(ApiError):
                async for sse in client.events(EVENTS_PATH, query={"vm": name}, on_open=accepted):
                    self._queue.put_nowait(json_object(sse.data, "event"))
        finally:
            self._queue.put_nowait(None)


@contextlib.asynccontextmanager
async def watch_vm(
    client: VolantClient, name: str, *, open_timeout: float = OPEN_TIMEOUT
) -> AsyncIterator[VMWatch]:
    """Subscribe to VM name's events; the block starts once the daemon accepted the stream,
    or it failed, or open_timeout passed (then `live` is False and no event will come)."""
    watch = VMWatch()
    opened = asyncio.Event()
    pump = asyncio.create_task(watch._pump(client, name, opened))
    waiter = asyncio.create_task(opened.wait())
    try:
        await asyncio.wait(
            {pump, waiter}, timeout=open_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not watch.live:
            pump.cancel()
        yield watch
    finally:
        for task in (pump, waiter):
            task.cancel()
        await asyncio.gather(pump, waiter, return_exceptions=True)
