"""Replay-then-live event feeds: what the store holds after a position, then the bus's live events,
with no gap and no repeat between the two.

The order of steps is what makes it exact. The feed subscribes to the bus before it reads the
store, and every event is persisted before it is published; so an event is either in the store
when the replay reads it, or published after the subscription began and therefore queued. One in
both places (persisted before the replay read, published after the subscription) is skipped in
the live phase by its id, which is not above the last one delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType

from volant.engine.events import EventBus, Subscription
from volant.engine.ports import Store
from volant.model import Event, EventType, InvalidArgument

REPLAY_PAGE = 500


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants: those of one VM, of some types (empty: any), or all."""

    vm: str | None = None
    types: frozenset[EventType] = field(default_factory=frozenset)

    def accepts(self, event: Event) -> bool:
        return (self.vm is None or event.vm == self.vm) and (
            not self.types or event.type in self.types
        )


class EventFeed:
    """Events after a position, first from the store, then live; use it with `async with`.

    `after` None starts at the newest event (live only). `position` is the id of the last event
    delivered (or where the feed started): a reader that reconnects from it misses nothing. A
    reader that falls `queue_size` live events behind is dropped: `next()` then returns None
    and `dropped` is True; the daemon stopping ends a feed the same way with `dropped` False.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        after: int | None,
        filter: EventFilter,
        queue_size: int,
    ) -> None:
        self._store = store
        self._bus = bus
        self._after = after
        self.filter = filter
        self._queue_size = queue_size
        self._sub: Subscription | None = None
        self._page: deque[Event] = deque()
        self._replaying = after is not None
        self.position = after or 0

    async def __aenter__(self) -> EventFeed:
        self._sub = self._bus.subscribe(self._queue_size, self.filter.accepts)
        try:
            newest = await self._store.last_event_id()
        except BaseException:
            self._sub.close()
            raise
        if self._after is None:
            self.position = newest
        elif self._after > newest:
            self._sub.close()
            raise InvalidArgument(
                f"event id {self._after} is ahead of the event log (newest is {newest}); "
                "was volantd's state reset?",
                hint="reconnect without Last-Event-ID (or with a smaller ?after=)",
                field="Last-Event-ID",
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the feed: `next()` returns None from now on."""
        if self._sub is not None:
            self._sub.close()

    @property
    def dropped(self) -> bool:
        return self._sub is not None and self._sub.dropped

    async def wait_ended(self) -> bool:
        """Wait until the feed's subscription ends; True when it was dropped as too slow."""
        return await self._subscription().wait_ended()

    async def next(self) -> Event | None:
        """The next event, or None once the feed has ended.

        Safe to cancel (e.g. by a heartbeat timeout): state changes only after each await, so a
        cancelled call loses nothing and the next call carries on.
        """
        sub = self._subscription()
        while True:
            if self._page:
                event = self._page.popleft()
                self.position = event.id
                return event
            if self._replaying:
                await self._replay_page()
                continue
            if sub.dropped:
                return None  # what is still queued will be replayed on reconnection
            live = await sub.get()
            if live is None:
                return None
            if live.id > self.position:
                self.position = live.id
                return live

    async def _replay_page(self) -> None:
        page = await self._store.list_events(
            self.position, REPLAY_PAGE, vm=self.filter.vm, types=self.filter.types
        )
        self._replaying = len(page) == REPLAY_PAGE
        self._page.extend(page)

    def _subscription(self) -> Subscription:
        if self._sub is None:
            raise RuntimeError("use the feed inside `async with`")
        return self._sub


def event_filter(vm: str | None, types: Collection[EventType]) -> EventFilter:
    return EventFilter(vm=vm, types=frozenset(EventType(t) for t in types))
