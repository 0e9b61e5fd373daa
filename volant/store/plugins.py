"""Plugin operations. Plain blocking functions: the store runs them on its own thread."""

from __future__ import annotations

import peewee

from volant.model import Conflict, NameTaken, NotFound, Plugin
from volant.store.rows import PluginRow, VMRow, name_some, to_plugin, utcnow


def _row(db: peewee.SqliteDatabase, name: str) -> PluginRow:
    row: PluginRow | None = PluginRow.select().where(PluginRow.name == name).first(db)
    if row is None:
        raise NotFound(f"no plugin named {name!r}", hint="`volar plugins list` shows the plugins")
    return row


def add_plugin(
    db: peewee.SqliteDatabase,
    *,
    manifest_json: str,
    name: str,
    version: str,
    runtime: str,
    digest: str,
    enabled: bool,
    signer: str = "",
    source: str = "",
    replace: bool = False,
) -> Plugin:
    now = utcnow()
    values = {
        "name": name,
        "version": version,
        "runtime": runtime,
        "manifest_json": manifest_json,
        "digest": digest,
        "enabled": enabled,
        "signer": signer,
        "source": source,
        "created_at": now,
        "updated_at": now,
    }
    with db.atomic():
        existing: PluginRow | None = PluginRow.select().where(PluginRow.name == name).first(db)
        if existing is not None and replace:
            changes = {k: values[k] for k in ("version", "runtime", "manifest_json", "digest")}
            changes |= {"signer": signer, "source": source, "updated_at": now}
            PluginRow.update(changes).where(PluginRow.id == existing.id).execute(db)
            for key, value in changes.items():
                setattr(existing, key, value)
            return to_plugin(existing)
        if existing is not None:
            raise NameTaken(
                f"a plugin named {name!r} is already installed",
                hint="install with --replace to upgrade it in place",
                field="name",
            )
        try:
            plugin_id: int = PluginRow.insert(values).execute(db)
        except peewee.IntegrityError as err:
            # The table's CHECKs (json_valid) are the last line; callers validate first.
            raise Conflict(f"cannot record plugin {name!r}: {err}") from err
    return to_plugin(PluginRow(id=plugin_id, **values))


def get_plugin(db: peewee.SqliteDatabase, name: str) -> Plugin:
    return to_plugin(_row(db, name))


def list_plugins(db: peewee.SqliteDatabase) -> list[Plugin]:
    return [to_plugin(row) for row in PluginRow.select().order_by(PluginRow.name).execute(db)]


def set_plugin_enabled(db: peewee.SqliteDatabase, name: str, enabled: bool) -> Plugin:
    with db.atomic():
        row = _row(db, name)
        if bool(row.enabled) != enabled:
            row.enabled = enabled
            row.updated_at = utcnow()
            PluginRow.update(enabled=enabled, updated_at=row.updated_at).where(
                PluginRow.id == row.id
            ).execute(db)
    return to_plugin(row)


def delete_plugin(db: peewee.SqliteDatabase, name: str) -> None:
    # One transaction (taken with BEGIN IMMEDIATE): no VM can start using the plugin between
    # the check and the delete.
    with db.atomic():
        row = _row(db, name)
        users = [
            vm.name
            for vm in VMRow.select(VMRow.name)
            .where(VMRow.plugin == name)
            .order_by(VMRow.name)
            .execute(db)
        ]
        if users:
            raise Conflict(
                f"plugin {name!r} is used by VM(s) {name_some(users)}",
                hint="delete those VMs first, or disable the plugin instead",
            )
        PluginRow.delete().where(PluginRow.id == row.id).execute(db)
