"""Volume records and their attachments to VMs.

The functions are plain and blocking, run on the store's one thread; `SqliteVolumes` is the
engine's VolumeStore port over them, sharing the SqliteStore's thread and database.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import peewee

from volant.model import (
    Conflict,
    NameTaken,
    NotFound,
    Volume,
    VolumeAttachment,
    VolumeMount,
)
from volant.store.rows import VMRow, VMVolumeRow, VolumeRow, name_some, utcnow

_T = TypeVar("_T")
Call = Callable[[Callable[[], _T]], Awaitable[_T]]


def _row(db: peewee.SqliteDatabase, name: str) -> VolumeRow:
    row: VolumeRow | None = VolumeRow.select().where(VolumeRow.name == name).first(db)
    if row is None:
        raise NotFound(f"no volume named {name!r}", hint="`volar volumes list` shows the volumes")
    return row


def _attachments(db: peewee.SqliteDatabase, volume_id: int) -> tuple[VolumeAttachment, ...]:
    query = (
        VMVolumeRow.select(VMVolumeRow.path, VMVolumeRow.read_only, VMRow.name, VMRow.status)
        .join(VMRow, on=(VMRow.id == VMVolumeRow.vm_id))
        .where(VMVolumeRow.volume_id == volume_id)
        .order_by(VMRow.name)
        .tuples()
    )
    return tuple(
        VolumeAttachment(vm=vm, path=path, read_only=bool(ro), vm_status=status)
        for path, ro, vm, status in query.execute(db)
    )


def _volume(db: peewee.SqliteDatabase, row: VolumeRow) -> Volume:
    return Volume(
        name=row.name,
        size_bytes=row.size_bytes,
        formatted=bool(row.formatted),
        created_at=row.created_at,
        updated_at=row.updated_at,
        attachments=_attachments(db, row.id),
    )


def create(db: peewee.SqliteDatabase, name: str, size: int) -> Volume:
    now = utcnow()
    values: dict[str, Any] = {
        "name": name,
        "size_bytes": size,
        "formatted": False,
        "created_at": now,
        "updated_at": now,
    }
    with db.atomic():
        if VolumeRow.select().where(VolumeRow.name == name).exists(db):
            raise NameTaken(f"a volume named {name!r} already exists", field="name")
        volume_id = VolumeRow.insert(values).execute(db)
    return _volume(db, VolumeRow(id=volume_id, **values))


def get(db: peewee.SqliteDatabase, name: str) -> Volume:
    return _volume(db, _row(db, name))


def exists(db: peewee.SqliteDatabase, name: str) -> bool:
    return bool(VolumeRow.select().where(VolumeRow.name == name).exists(db))


def listing(db: peewee.SqliteDatabase) -> list[Volume]:
    rows = VolumeRow.select().order_by(VolumeRow.name).execute(db)
    return [_volume(db, row) for row in rows]


def update(db: peewee.SqliteDatabase, name: str, **values: Any) -> Volume:
    """Set size_bytes or formatted; bumps updated_at."""
    with db.atomic():
        row = _row(db, name)
        values["updated_at"] = utcnow()
        VolumeRow.update(values).where(VolumeRow.id == row.id).execute(db)
        for key, value in values.items():
            setattr(row, key, value)
    return _volume(db, row)


def delete(db: peewee.SqliteDatabase, name: str) -> None:
    """Delete the volume's row; Conflict while any VM has it attached (same transaction, so
    no create can attach it in between)."""
    with db.atomic():
        row = _row(db, name)
        users = [a.vm for a in _attachments(db, row.id)]
        if users:
            raise Conflict(
                f"volume {name!r} is attached to VM(s) {name_some(users)}",
                hint="delete those VMs first; the volume outlives them",
            )
        VolumeRow.delete().where(VolumeRow.id == row.id).execute(db)


def attach(db: peewee.SqliteDatabase, vm_id: int, mounts: Sequence[VolumeMount]) -> None:
    """Record a new VM's volumes; call inside the transaction that inserts the VM."""
    for mount in mounts:
        row: VolumeRow | None = VolumeRow.select().where(VolumeRow.name == mount.name).first(db)
        if row is None:
            raise NotFound(
                f"no volume named {mount.name!r}",
                hint=f"`volar volumes create {mount.name} --size 1G` makes one",
                field="volumes",
            )
        VMVolumeRow.insert(
            vm_id=vm_id, volume_id=row.id, path=mount.path, read_only=mount.read_only
        ).execute(db)


def of_vm(db: peewee.SqliteDatabase, vm: str) -> list[VolumeMount]:
    """The volumes a VM has, in the order of their names."""
    query = (
        VMVolumeRow.select(VolumeRow.name, VMVolumeRow.path, VMVolumeRow.read_only)
        .join(VolumeRow, on=(VolumeRow.id == VMVolumeRow.volume_id))
        .join(VMRow, on=(VMRow.id == VMVolumeRow.vm_id))
        .where(VMRow.name == vm)
        .order_by(VolumeRow.name)
        .tuples()
    )
    return [VolumeMount(name, path, bool(ro)) for name, path, ro in query.execute(db)]


def vm_state(db: peewee.SqliteDatabase, vm: str) -> tuple[str, datetime] | None:
    """(status, updated_at) of a VM; None when it is gone."""
    row: VMRow | None = (
        VMRow.select(VMRow.status, VMRow.updated_at).where(VMRow.name == vm).first(db)
    )
    return None if row is None else (row.status, row.updated_at)


class SqliteVolumes:
    """The engine's VolumeStore port, on the SqliteStore's thread and database."""

    def __init__(self, db: peewee.SqliteDatabase, call: Call[Any], add: Call[Any]) -> None:
        self._db = db
        self._call = call
        self._add = add

    async def create_volume(self, name: str, size: int) -> Volume:
        """Record a new volume; NameTaken when one of that name exists."""
        result: Volume = await self._add(functools.partial(create, self._db, name, size))
        return result

    async def get_volume(self, name: str) -> Volume:
        result: Volume = await self._call(functools.partial(get, self._db, name))
        return result

    async def volume_exists(self, name: str) -> bool:
        result: bool = await self._call(functools.partial(exists, self._db, name))
        return result

    async def list_volumes(self) -> list[Volume]:
        result: list[Volume] = await self._call(functools.partial(listing, self._db))
        return result

    async def update_volume(
        self, name: str, *, size_bytes: int | None = None, formatted: bool | None = None
    ) -> Volume:
        values: dict[str, Any] = {}
        if size_bytes is not None:
            values["size_bytes"] = size_bytes
        if formatted is not None:
            values["formatted"] = formatted
        result: Volume = await self._call(functools.partial(update, self._db, name, **values))
        return result

    async def delete_volume(self, name: str) -> None:
        """Delete the row; Conflict while a VM has the volume attached."""
        await self._call(functools.partial(delete, self._db, name))

    async def vm_volumes(self, vm: str) -> list[VolumeMount]:
        result: list[VolumeMount] = await self._call(functools.partial(of_vm, self._db, vm))
        return result

    async def vm_state(self, vm: str) -> tuple[str, datetime] | None:
        result: tuple[str, datetime] | None = await self._call(
            functools.partial(vm_state, self._db, vm)
        )
        return result
