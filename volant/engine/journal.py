"""Event verbs: the persisted log, live feeds over it, and its retention.

`EventVerbs` is a base of `Engine`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from volant.config import Config
from volant.engine.events import EventBus
from volant.engine.feed import EventFeed, event_filter
from volant.engine.ports import Store
from volant.model import Event, EventType
from volant.model.validate import validate_name

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 3600.0
"""Seconds between passes of the retention task (the first runs when the engine starts)."""


class EventVerbs:
    """Reading and following the event log, and keeping it within its retention; a base of
    Engine."""

    config: Config
    store: Store
    bus: EventBus

    async def list_events(
        self,
        after_id: int = 0,
        limit: int = 1000,
        *,
        vm: str | None = None,
        types: Collection[EventType] = (),
    ) -> list[Event]:
        """Persisted events after after_id, oldest first; only vm's and of types when given."""
        vm = validate_name(vm) if vm is not None else None
        return await self.store.list_events(after_id, limit, vm=vm, types=types)

    def follow_events(
        self,
        after_id: int | None = None,
        *,
        vm: str | None = None,
        types: Collection[EventType] = (),
    ) -> EventFeed:
        """A feed of the events after after_id (None: from now on), replayed from the log, then
        live; enter it with `async with` (InvalidArgument there when after_id is ahead of
        the log). A reader that falls events.queue_size events behind is dropped."""
        vm = validate_name(vm) if vm is not None else None
        return EventFeed(
            self.store,
            self.bus,
            after=after_id,
            filter=event_filter(vm, types),
            queue_size=self.config.events_queue_size,
        )

    async def _keep_events_trimmed(self) -> None:
        """The retention task: prune at once, then every RETENTION_INTERVAL seconds."""
        while True:
            try:
                await self._prune_events()
            except Exception:
                log.exception("could not prune the event log")
            await asyncio.sleep(RETENTION_INTERVAL)

    async def _prune_events(self) -> int:
        """Apply events.retention_days and events.max_rows (0: no limit); how many went."""
        days = self.config.events_retention_days
        rows = self.config.events_max_rows
        cutoff = datetime.now(UTC) - timedelta(days=days) if days > 0 else None
        pruned = await self.store.prune_events(cutoff, rows if rows > 0 else None)
        if pruned:
            log.info(
                "pruned %d events from the event log (events.retention_days=%g, "
                "events.max_rows=%d)",
                pruned,
                days,
                rows,
            )
        return pruned
