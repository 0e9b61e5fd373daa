"""The event log. Plain blocking functions: the store runs them on its own thread.

Ids come from AUTOINCREMENT, so an id is never handed out twice, not even after pruning has
emptied the table: a reader's position (SSE Last-Event-ID) stays meaningful across pruning.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import peewee

from volant.model import Event, EventType
from volant.store.rows import EventRow, run_sql, to_event, utcnow


def append_event(db: peewee.SqliteDatabase, type: EventType, vm: str, payload_json: str) -> Event:
    now = utcnow()
    with db.atomic():
        event_id: int = EventRow.insert(
            ts=now, type=type.value, vm=vm, payload=payload_json
        ).execute(db)
    return to_event(EventRow(id=event_id, ts=now, type=type.value, vm=vm, payload=payload_json))


def list_events(
    db: peewee.SqliteDatabase,
    after_id: int,
    limit: int,
    vm: str | None = None,
    types: Collection[EventType] = (),
) -> list[Event]:
    """Events after after_id, oldest first; filtered before the limit applies, so a page is
    never short because other VMs' events filled it."""
    query = EventRow.select().where(EventRow.id > after_id)
    if vm is not None:
        query = query.where(EventRow.vm == vm)
    if types:
        query = query.where(EventRow.type.in_(sorted(t.value for t in types)))
    return [to_event(row) for row in query.order_by(EventRow.id).limit(limit).execute(db)]


def last_event_id(db: peewee.SqliteDatabase) -> int:
    """The largest id ever handed out (0 before the first event), pruned events included."""
    rows = run_sql(db, "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    return int(rows[0][0]) if rows else 0


def prune_boundary(db: peewee.SqliteDatabase, keep_rows: int) -> int:
    """The id at or below which events go so that keep_rows of the newest stay; 0: none go."""
    rows = run_sql(
        db, "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", (max(keep_rows, 0),)
    )
    return int(rows[0][0]) if rows else 0


def prune_chunk(
    db: peewee.SqliteDatabase, older_than: datetime | None, up_to_id: int, chunk: int
) -> int:
    """Delete at most chunk of the oldest events that are older than older_than or have an id
    up to up_to_id; how many went. Short transactions let other writers in between chunks."""
    condition = EventRow.id <= up_to_id
    if older_than is not None:
        condition |= EventRow.ts < older_than
    doomed = EventRow.select(EventRow.id).where(condition).order_by(EventRow.id).limit(chunk)
    with db.atomic():
        deleted: int = EventRow.delete().where(EventRow.id.in_(doomed)).execute(db)
    return deleted
