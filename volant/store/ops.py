"""VM operations. Plain blocking functions: the store runs them on its own thread."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import peewee

from volant.model import (
    Conflict,
    InvalidArgument,
    InvalidState,
    NameTaken,
    NotFound,
    PoolExhausted,
    VirtualMachine,
    VMQuery,
    VMSortKey,
    VMSpec,
    VMStatus,
)
from volant.store import pool, volumes
from volant.store.rows import PluginRow, VMRow, to_vm, utcnow

MacFor = Callable[[str, str | None], str]

# ip_address is absent on purpose: it changes only with its lease, in create_vm and delete_vm.
# agent_secret only to give a VM from before secrets its first one.
UPDATABLE = frozenset({"status", "pid", "kernel_cmdline", "unit", "status_reason", "agent_secret"})


def _row(db: peewee.SqliteDatabase, name: str) -> VMRow:
    row: VMRow | None = VMRow.select().where(VMRow.name == name).first(db)
    if row is None:
        raise NotFound(f"no VM named {name!r}", hint="`volar vms list` shows the VMs")
    return row


def create_vm(
    db: peewee.SqliteDatabase,
    spec: VMSpec,
    *,
    runtime: str,
    unit: str,
    mac_for: MacFor,
    lease_ip: bool,
    manifest_json: str = "",
    agent_secret: str = "",
) -> VirtualMachine:
    """Insert the VM and take its lease in one transaction; on error nothing remains.

    The VM's plugin must be installed and enabled and its volumes must exist; that is checked in
    the same transaction, so neither can be removed between the check and the insert.
    """
    if spec.cpu_cores is None or spec.memory_mb is None:
        raise TypeError("create_vm() needs a spec with cpu_cores and memory_mb resolved")
    now = utcnow()
    with db.atomic():
        if VMRow.select().where(VMRow.name == spec.name).exists(db):
            raise NameTaken(f"a VM named {spec.name!r} already exists", field="name")
        _check_plugin(db, spec.plugin)
        ip = None
        if lease_ip:
            ip = pool.lowest_free(db)
            if ip is None:
                leased, total = pool.usage(db)
                raise PoolExhausted(
                    f"no free IP address left in the pool ({leased} of {total} leased)",
                    hint="delete a VM, or configure a larger subnet",
                )
        mac = mac_for(spec.name, ip)
        values: dict[str, Any] = {
            "name": spec.name,
            "status": VMStatus.CREATING.value,
            "pid": None,
            "ip_address": ip,
            "mac": mac,
            "cpu_cores": spec.cpu_cores,
            "memory_mb": spec.memory_mb,
            "plugin": spec.plugin,
            "runtime": runtime,
            "kernel_cmdline": "",
            "unit": unit,
            "manifest_json": manifest_json,
            "isolated": spec.isolated,
            "ephemeral": spec.ephemeral,
            "agent_secret": agent_secret,
            "publish": json.dumps([str(mapping) for mapping in spec.publish or ()]),
            "created_at": now,
            "updated_at": now,
        }
        try:
            vm_id: int = VMRow.insert(values).execute(db)
        except peewee.IntegrityError as err:
            raise Conflict(f"cannot record VM {spec.name!r}: {err}") from err
        # Transactions take the write lock up front (BEGIN IMMEDIATE), so the address read
        # above cannot have been leased by anyone else in between.
        if ip is not None and not pool.lease(db, ip, vm_id, now):
            raise Conflict(f"IP address {ip} was leased concurrently; retry")
        volumes.attach(db, vm_id, spec.volumes)
    return to_vm(VMRow(id=vm_id, **values))


def _check_plugin(db: peewee.SqliteDatabase, name: str) -> None:
    row: PluginRow | None = PluginRow.select().where(PluginRow.name == name).first(db)
    if row is None:
        raise NotFound(
            f"no plugin named {name!r} is installed",
            hint="`volar plugins list` shows the plugins; `volar plugins install` adds one",
            field="plugin",
        )
    if not row.enabled:
        raise InvalidState(
            f"plugin {name!r} is disabled", hint=f"`volar plugins enable {name}`", field="plugin"
        )


def get_vm(db: peewee.SqliteDatabase, name: str) -> VirtualMachine:
    return to_vm(_row(db, name))


def list_vms(db: peewee.SqliteDatabase) -> list[VirtualMachine]:
    return [to_vm(row) for row in VMRow.select().order_by(VMRow.name).execute(db)]


_SORT_COLUMNS: dict[VMSortKey, Any] = {
    VMSortKey.NAME: VMRow.name,
    VMSortKey.STATUS: VMRow.status,
    VMSortKey.PLUGIN: VMRow.plugin,
    VMSortKey.CPU_CORES: VMRow.cpu_cores,
    VMSortKey.MEMORY_MB: VMRow.memory_mb,
    VMSortKey.CREATED_AT: VMRow.created_at,
    VMSortKey.UPDATED_AT: VMRow.updated_at,
}


def query_vms(db: peewee.SqliteDatabase, query: VMQuery) -> tuple[list[VirtualMachine], int]:
    """The VMs matching query's filters, in its order and window, and how many matched."""
    select = VMRow.select()
    if query.status is not None:
        select = select.where(VMRow.status == query.status.value)
    if query.plugin is not None:
        select = select.where(VMRow.plugin == query.plugin)
    if query.prefix:
        # substr rather than LIKE: no wildcard in a prefix can ever match more than it says.
        select = select.where(peewee.fn.substr(VMRow.name, 1, len(query.prefix)) == query.prefix)
    total = select.count(db)
    column = _SORT_COLUMNS[query.sort]
    order = column.desc() if query.descending else column.asc()
    select = select.order_by(order, VMRow.name).offset(query.offset)
    if query.limit is not None:
        select = select.limit(query.limit)
    return [to_vm(row) for row in select.execute(db)], total


def check_update(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate update_vm's keyword arguments; return the column values to write."""
    unknown = sorted(set(fields) - UPDATABLE)
    if unknown:
        raise TypeError(
            f"update_vm() got unexpected field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(UPDATABLE))}"
        )
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "status":
            if not isinstance(value, VMStatus):
                raise TypeError(f"status must be a VMStatus, not {type(value).__name__}")
            values[key] = value.value
        elif key == "pid":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"pid must be an int or None, not {type(value).__name__}")
            if value is not None and value <= 0:
                raise InvalidArgument(f"pid must be positive, got {value}", field="pid")
            values[key] = value
        else:
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a str, not {type(value).__name__}")
            values[key] = value
    return values


def update_vm(db: peewee.SqliteDatabase, name: str, values: dict[str, Any]) -> VirtualMachine:
    with db.atomic():
        row = _row(db, name)
        if not values:
            return to_vm(row)
        values = {**values, "updated_at": utcnow()}
        VMRow.update(values).where(VMRow.id == row.id).execute(db)
        for key, value in values.items():
            setattr(row, key, value)
    return to_vm(row)


def delete_vm(
    db: peewee.SqliteDatabase, name: str, in_pool: Callable[[IPv4Address], bool] | None = None
) -> None:
    with db.atomic():
        row = _row(db, name)
        pool.release(db, row.id, in_pool)
        VMRow.delete().where(VMRow.id == row.id).execute(db)


def set_vm_address(db: peewee.SqliteDatabase, name: str, ip: str | None) -> VirtualMachine:
    """Record the address of a VM that holds no pool lease (a dhcp-mode VM's DHCP lease)."""
    with db.atomic():
        row = _row(db, name)
        if pool.leased_to(db, row.id):
            raise InvalidState(f"VM {name!r} has a static address from the pool")
        if ip is not None:
            other = VMRow.select().where((VMRow.ip_address == ip) & (VMRow.id != row.id))
            holder: VMRow | None = other.first(db)
            if holder is not None:
                raise Conflict(f"address {ip} of VM {name!r} is VM {holder.name!r}'s already")
        values = {"ip_address": ip, "updated_at": utcnow()}
        VMRow.update(values).where(VMRow.id == row.id).execute(db)
        for key, value in values.items():
            setattr(row, key, value)
    return to_vm(row)
