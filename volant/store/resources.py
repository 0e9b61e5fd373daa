"""Records of host resources. Plain blocking functions: the store runs them on its own thread."""

from __future__ import annotations

import peewee

from volant.model import HostResource, ResourceKind, ResourceState
from volant.store.rows import ResourceRow, to_resource, utcnow


def intend(db: peewee.SqliteDatabase, kind: ResourceKind, name: str, vm: str) -> None:
    """Record that a resource is about to be made (kept as it is when already present)."""
    now = utcnow()
    (
        ResourceRow.insert(
            kind=kind.value,
            name=name,
            vm=vm,
            state=ResourceState.INTENDED.value,
            created_at=now,
            updated_at=now,
        )
        .on_conflict(
            conflict_target=[ResourceRow.kind, ResourceRow.name],
            update={ResourceRow.vm: vm, ResourceRow.updated_at: now},
        )
        .execute(db)
    )


def made(db: peewee.SqliteDatabase, kind: ResourceKind, name: str) -> None:
    """Record that the resource exists on the host now."""
    (
        ResourceRow.update(state=ResourceState.PRESENT.value, updated_at=utcnow())
        .where((ResourceRow.kind == kind.value) & (ResourceRow.name == name))
        .execute(db)
    )


def forget(db: peewee.SqliteDatabase, kind: ResourceKind, name: str) -> None:
    """Drop the record of a resource that no longer exists on the host."""
    (
        ResourceRow.delete()
        .where((ResourceRow.kind == kind.value) & (ResourceRow.name == name))
        .execute(db)
    )


def listing(db: peewee.SqliteDatabase, vm: str | None) -> list[HostResource]:
    """Every record (of one VM when vm is given), by kind and name."""
    query = ResourceRow.select().order_by(ResourceRow.kind, ResourceRow.name)
    if vm is not None:
        query = query.where(ResourceRow.vm == vm)
    return [to_resource(row) for row in query.execute(db)]
