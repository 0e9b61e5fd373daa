"""Serving an event feed as Server-Sent Events: framing, heartbeats, and cutting a slow reader.

Each event is `id: <event id>`, `event: <TYPE>`, `data: <event JSON>`. The stream opens with a
`retry:` hint and an `id:` line without data, which tells the reader (a browser's EventSource
included) its position before any event arrives, so a reconnection right away loses nothing.
Heartbeats are comments. A reader dropped as too slow gets its connection closed at once, even
while a write to it is stuck: it reconnects with Last-Event-ID and the log fills the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator

from aiohttp import web

from volant.engine import EventFeed
from volant.model import Event, InvalidArgument

log = logging.getLogger(__name__)

MEDIA = "text/event-stream"
RETRY_MS = 2000
HEARTBEAT = b": heartbeat\n\n"
HEADERS = {
    "Content-Type": MEDIA,
    "Cache-Control": "no-cache",
    # A buffering reverse proxy (nginx) would hold events back until its buffer fills.
    "X-Accel-Buffering": "no",
}


def frame(event: Event) -> bytes:
    data = json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True)
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {data}\n\n".encode()


def last_event_id(request: web.Request, default: int | None) -> int | None:
    """The Last-Event-ID header as an event id; default when absent or empty."""
    text = request.headers.get("Last-Event-ID", "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(
            f"Last-Event-ID must be an event id (a number), got {text[:40]!r}",
            field="Last-Event-ID",
        )
    return int(text)


class OpenStreams:
    """The feeds being served; on shutdown they are ended so their handlers return instead of
    holding the server's graceful stop until its timeout."""

    def __init__(self) -> None:
        self._feeds: set[EventFeed] = set()

    @contextlib.contextmanager
    def track(self, feed: EventFeed) -> Iterator[None]:
        self._feeds.add(feed)
        try:
            yield
        finally:
            self._feeds.discard(feed)

    def __len__(self) -> int:
        return len(self._feeds)

    def close_all(self) -> None:
        for feed in list(self._feeds):
            feed.close()


STREAMS = web.AppKey("event_streams", OpenStreams)


async def send_feed(
    request: web.Request, feed: EventFeed, *, heartbeat: float
) -> web.StreamResponse:
    """Stream feed to the caller until it ends, the caller leaves, or it is dropped."""
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    pump = asyncio.create_task(_pump(response, feed, heartbeat))
    ended = asyncio.create_task(feed.wait_ended())
    try:
        await asyncio.wait({pump, ended}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done() or not ended.result():
            await pump  # ended normally (the daemon stops): the pump sees the end itself
            return response
    finally:
        for task in (pump, ended):
            task.cancel()
        await asyncio.gather(pump, ended, return_exceptions=True)
    log.info(
        "closing the event stream of %s: it fell behind at event %d",
        request.remote or "a unix-socket caller",
        feed.position,
    )
    if request.transport is not None:
        request.transport.abort()  # a write to a reader that reads nothing would never finish
    return response


async def _pump(response: web.StreamResponse, feed: EventFeed, heartbeat: float) -> None:
    try:
        await response.write(f"retry: {RETRY_MS}\nid: {feed.position}\n\n".encode())
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    event = await feed.next()
            except TimeoutError:
                await response.write(HEARTBEAT)
                continue
            if event is None:
                return
            await response.write(frame(event))
    except ConnectionError:
        return  # the reader went away
