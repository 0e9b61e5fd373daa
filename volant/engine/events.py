"""In-process event bus: every persisted event is fanned out to bounded subscriber queues."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from volant.model import Event

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's bounded queue; one that falls behind is dropped, never waited on."""

    def __init__(self, bus: EventBus, maxsize: int, accept: Callable[[Event], bool]) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._accept = accept
        self._ended = asyncio.Event()
        self.dropped = False

    def _offer(self, event: Event) -> None:
        if self.dropped or not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("dropping a slow event subscriber (queue of %d full)", self._queue.maxsize)
            self._close(dropped=True)

    def _close(self, *, dropped: bool = False) -> None:
        self.dropped = self.dropped or dropped
        self._ended.set()
        self._bus._discard(self)
        # Wake the reader even when the queue is full: it sees the end after what it has.
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def close(self) -> None:
        self._close()

    async def wait_ended(self) -> bool:
        """Wait until the subscription ends (closed, or dropped: then True), even while its
        reader is busy elsewhere, e.g. blocked writing to a client that reads nothing."""
        await self._ended.wait()
        return self.dropped

    async def get(self) -> Event | None:
        """The next event, or None once the subscription has ended."""
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self._queue.get()) is not None:
            yield event


class EventBus:
    """Publishes events to subscribers without ever blocking the publisher."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(
        self, maxsize: int = 256, accept: Callable[[Event], bool] | None = None
    ) -> Subscription:
        sub = Subscription(self, maxsize, accept or (lambda _event: True))
        self._subscribers.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            sub._offer(event)

    def _discard(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
