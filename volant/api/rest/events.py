"""REST routes of the event log: the persisted list, and the live stream (Server-Sent Events)."""

from __future__ import annotations

from aiohttp import web

from . import replies as r
from .common import engine_of
from .schemas import EventsQuery, EventStreamQuery, parse_query
from .spec import Api, Body, Header
from .sse import MEDIA, STREAMS, last_event_id, send_feed

TAG = "events"

STREAM_DOC = (
    "One event per message: `id:` the event id, `event:` its type, `data:` the event as JSON "
    "(id, ts, type, vm, payload). Opens with `retry:` and an `id:` line giving the position; "
    "`: heartbeat` comments every events.heartbeat_seconds while idle. A reader that falls "
    "events.queue_size events behind has its connection closed; it reconnects with "
    "Last-Event-ID and misses nothing."
)


async def list_events(request: web.Request) -> web.Response:
    """Persisted events after ?after=<id>, oldest first, optionally of one ?vm= or ?type=s."""
    query = parse_query(EventsQuery, request.query)
    events = await engine_of(request).list_events(
        query.after, query.limit, vm=query.vm, types=query.types()
    )
    return web.json_response({"events": [e.to_dict() for e in events]})


async def follow_events(request: web.Request) -> web.StreamResponse:
    """The events after Last-Event-ID (or ?after=) from the log, then live ones as they come."""
    engine = engine_of(request)
    query = parse_query(EventStreamQuery, request.query)
    after = last_event_id(request, default=query.after)
    feed = engine.follow_events(after, vm=query.vm, types=query.types())
    async with feed:  # a position ahead of the log fails here, still as problem+json
        with request.app[STREAMS].track(feed):
            heartbeat = engine.config.events_heartbeat_seconds
            return await send_feed(request, feed, heartbeat=heartbeat)


def add_routes(api: Api) -> None:
    api.add(
        "GET",
        "/api/v1/events",
        list_events,
        summary="Persisted events",
        tag=TAG,
        query=EventsQuery,
        ok={200: ("Events, oldest first", Body(r.EventList))},
    )
    api.add(
        "GET",
        "/api/v1/events/vms",
        follow_events,
        summary="Live VM lifecycle events (Server-Sent Events), with replay",
        tag=TAG,
        query=EventStreamQuery,
        headers=(
            Header(
                "Last-Event-ID",
                "Resume after this event id (sent by EventSource on reconnection)",
                {"type": "string", "pattern": "^[0-9]+$"},
            ),
        ),
        ok={200: ("The event stream", Body(media=MEDIA, schema={"description": STREAM_DOC}))},
        errors=(400,),
        stream=True,
    )
