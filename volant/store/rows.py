"""Peewee row classes, private to the store, and their conversion to the frozen models.

The classes are never bound to a database: every query names the store's database when it
executes (`query.execute(db)`, `.first(db)`), so two stores in one process cannot share state
through class attributes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee

from volant.model import (
    Event,
    EventType,
    HostResource,
    Plugin,
    ResourceKind,
    ResourceState,
    VirtualMachine,
    VMStatus,
    parse_publish,
)

FREE = "free"
LEASED = "leased"


def name_some(names: list[str], shown: int = 5) -> str:
    """The first `shown` names, then how many more: a refused delete names the VMs in its way
    without listing a thousand."""
    text = ", ".join(names[:shown])
    extra = len(names) - shown
    return text + (f" and {extra} more" if extra > 0 else "")


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_ts(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: the store records timezone-aware UTC only")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    # Rows written by hand (sqlite3 shell) may lack an offset; they are UTC by convention.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def run_sql(
    db: peewee.SqliteDatabase, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Raw SQL for what the row classes cannot say (DDL, pragmas); returns every result row."""
    cursor = db.execute_sql(sql, params)  # type: ignore[no-untyped-call]  # untyped in the stubs
    return list(cursor.fetchall())


if TYPE_CHECKING:
    _TimestampBase = peewee.Field[datetime]
else:  # peewee's Field is generic only in its stubs
    _TimestampBase = peewee.Field


class _Timestamp(_TimestampBase):
    field_type = "TEXT"

    def db_value(self, value: datetime | None) -> str | None:
        return None if value is None else format_ts(value)

    def python_value(self, value: str | None) -> datetime | None:
        return None if value is None else parse_ts(value)


class _Row(peewee.Model):
    class Meta:
        legacy_table_names = False


class VMRow(_Row):
    id = peewee.AutoField()
    name = peewee.TextField()
    status = peewee.TextField()
    pid = peewee.IntegerField(null=True)
    ip_address = peewee.TextField(null=True)
    mac = peewee.TextField()
    cpu_cores = peewee.IntegerField()
    memory_mb = peewee.IntegerField()
    plugin = peewee.TextField()
    runtime = peewee.TextField()
    kernel_cmdline = peewee.TextField()
    unit = peewee.TextField()
    status_reason = peewee.TextField(default="")
    manifest_json = peewee.TextField(default="")
    isolated = peewee.BooleanField(default=False)
    ephemeral = peewee.BooleanField(default=False)
    agent_secret = peewee.TextField(default="")
    publish = peewee.TextField(default="[]")
    created_at = _Timestamp()
    updated_at = _Timestamp()

    class Meta:
        table_name = "vms"


class IPRow(_Row):
    ip_address = peewee.TextField(primary_key=True)
    ip_num = peewee.IntegerField()
    # A plain column, not a ForeignKeyField: the constraint lives in the schema, and a
    # ForeignKeyField would lazily query vms behind the store's back.
    vm_id = peewee.IntegerField(null=True)
    status = peewee.TextField()
    leased_at = _Timestamp(null=True)

    class Meta:
        table_name = "ip_allocations"


class EventRow(_Row):
    id = peewee.AutoField()
    ts = _Timestamp()
    type = peewee.TextField()
    vm = peewee.TextField()
    payload = peewee.TextField()

    class Meta:
        table_name = "events"


class PluginRow(_Row):
    id = peewee.AutoField()
    name = peewee.TextField()
    version = peewee.TextField()
    runtime = peewee.TextField()
    manifest_json = peewee.TextField()
    digest = peewee.TextField()
    enabled = peewee.BooleanField()
    signer = peewee.TextField(default="")
    source = peewee.TextField(default="")
    created_at = _Timestamp()
    updated_at = _Timestamp()

    class Meta:
        table_name = "plugins"


class ResourceRow(_Row):
    kind = peewee.TextField()
    name = peewee.TextField()
    vm = peewee.TextField()
    state = peewee.TextField()
    created_at = _Timestamp()
    updated_at = _Timestamp()

    class Meta:
        table_name = "host_resources"
        primary_key = peewee.CompositeKey("kind", "name")


class VolumeRow(_Row):
    id = peewee.AutoField()
    name = peewee.TextField()
    size_bytes = peewee.IntegerField()
    filesystem = peewee.TextField(default="ext4")
    formatted = peewee.BooleanField(default=False)
    created_at = _Timestamp()
    updated_at = _Timestamp()

    class Meta:
        table_name = "volumes"


class VMVolumeRow(_Row):
    # Plain columns, like IPRow.vm_id: the constraints live in the schema.
    vm_id = peewee.IntegerField()
    volume_id = peewee.IntegerField()
    path = peewee.TextField()
    read_only = peewee.BooleanField(default=False)

    class Meta:
        table_name = "vm_volumes"
        primary_key = peewee.CompositeKey("vm_id", "volume_id")


def to_resource(row: ResourceRow) -> HostResource:
    return HostResource(
        kind=ResourceKind(row.kind),
        name=row.name,
        vm=row.vm,
        state=ResourceState(row.state),
        updated_at=row.updated_at,
    )


def to_vm(row: VMRow) -> VirtualMachine:
    return VirtualMachine(
        id=row.id,
        name=row.name,
        status=VMStatus(row.status),
        pid=row.pid,
        ip_address=row.ip_address,
        mac=row.mac,
        cpu_cores=row.cpu_cores,
        memory_mb=row.memory_mb,
        plugin=row.plugin,
        runtime=row.runtime,
        kernel_cmdline=row.kernel_cmdline,
        unit=row.unit,
        status_reason=row.status_reason,
        manifest_json=row.manifest_json,
        isolated=bool(row.isolated),
        ephemeral=bool(row.ephemeral),
        agent_secret=row.agent_secret,
        publish=tuple(parse_publish(text) for text in json.loads(row.publish)),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_event(row: EventRow) -> Event:
    payload: dict[str, Any] = json.loads(row.payload)
    return Event(id=row.id, ts=row.ts, type=EventType(row.type), vm=row.vm, payload=payload)


def to_plugin(row: PluginRow) -> Plugin:
    return Plugin(
        id=row.id,
        name=row.name,
        version=row.version,
        runtime=row.runtime,
        manifest_json=row.manifest_json,
        digest=row.digest,
        enabled=bool(row.enabled),
        signer=row.signer,
        source=row.source,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
