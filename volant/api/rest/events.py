"""REST routes of the event log."""

from __future__ import annotations

from aiohttp import web

from . import replies as r
from .common import engine_of
from .schemas import EventsQuery, parse_query
from .spec import Api, Body

TAG = "events"


async def list_events(request: web.Request) -> web.Response:
    """Persisted events after ?after=<id>, oldest first, optionally of one ?vm= or ?type=."""
    query = parse_query(EventsQuery, request.query)
    events = await engine_of(request).list_events(query.after, query.limit)
    selected = [
        e.to_dict()
        for e in events
        if (query.vm is None or e.vm == query.vm) and (query.type is None or e.type == query.type)
    ]
    return web.json_response({"events": selected})


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
