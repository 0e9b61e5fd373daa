"""Following volantd's event stream across dropped streams and daemon restarts.

The stream tells its reader where it is (`id:`) before and with every event; after a drop the
follower reconnects with that position as Last-Event-ID and the daemon replays what it missed
from its event log, so the caller sees every event exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from volant.client.errors import ApiError, json_object
from volant.client.http import VolantClient, event_filters
from volant.client.sse import SSEParser

EVENTS_PATH = "/api/v1/events/vms"
RETRY_FIRST = 0.5
RETRY_MAX = 5.0

OnRetry = Callable[[str, str, float], None]
"""Told (why the stream ended, the event id it resumes after, seconds until it tries)."""


def _worth_retrying(exc: ApiError) -> bool:
    """The daemon went away, ended the stream or is busy; not: it refused the request."""
    return exc.code in ("Unreachable", "BadResponse", "Timeout") or exc.status >= 500


async def follow_events(
    client: VolantClient,
    *,
    vm: str | None = None,
    types: Sequence[str] = (),
    since: int | None = None,
    on_retry: OnRetry | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Events as dicts (id, ts, type, vm, payload): those after id `since` first (None: only
    new ones), then live ones, for ever. Reconnects with a growing pause (up to RETRY_MAX s)
    when the stream drops; raises ApiError when the first connection fails or the daemon
    refuses the request."""
    position = "" if since is None else str(since)
    query = event_filters(vm, types)
    delay = RETRY_FIRST
    streamed = False
    while True:
        parser = SSEParser()
        try:
            async for sse in client.events(
                EVENTS_PATH, query=query, last_event_id=position, parser=parser
            ):
                position = parser.last_event_id
                yield json_object(sse.data, "event")
            reason = "the event stream ended"
        except ApiError as exc:
            if not (streamed or parser.last_event_id) or not _worth_retrying(exc):
                raise
            reason = exc.detail
        if parser.last_event_id:  # the stream opened: its position, and a fresh backoff
            position, streamed, delay = parser.last_event_id, True, RETRY_FIRST
        if on_retry is not None:
            on_retry(reason, position, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
