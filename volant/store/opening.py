"""Opening the state database: integrity check, a copy aside before migrating, migrations,
and the reserve, in that order, on the store's thread."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import peewee

from volant.model import InsufficientStorage, VolantError
from volant.store.backup import copy_aside
from volant.store.integrity import check_integrity, corrupt, is_corrupt
from volant.store.migrations import Migration, applied_versions, apply_migrations
from volant.store.rows import run_sql
from volant.store.space import Reserve, full_error, is_disk_full

log = logging.getLogger("volant.store.sqlite")


def connect(
    db: peewee.SqliteDatabase, path: Path, migrations: Sequence[Migration], reserve: Reserve
) -> None:
    """Open, check and migrate the database; keep its reserve (blocking: the store's thread)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existed = path.exists() and path.stat().st_size > 0
    try:
        db.connect()
        if existed:
            check_integrity(db, path)
        ((mode,),) = run_sql(db, "PRAGMA journal_mode")
        if str(mode).lower() != "wal":
            log.warning("state database %s is in %s journal mode, not WAL", path, mode)
        _copy_before_migrating(db, path, migrations)
        apply_migrations(db, migrations)
        if not reserve.ensure():
            log.warning(
                "less than %d KiB free for the state database in %s: new VMs and plugins are "
                "refused until there is more",
                reserve.size // 1024,
                path.parent,
            )
    except BaseException as exc:
        db.close()
        if not isinstance(exc, VolantError) and is_corrupt(exc):
            raise corrupt(path, [str(exc)]) from exc
        if not isinstance(exc, VolantError) and is_disk_full(exc):
            raise full_error(path) from exc
        raise


def _copy_before_migrating(
    db: peewee.SqliteDatabase, path: Path, migrations: Sequence[Migration]
) -> None:
    """Copy an existing database aside when a migration is about to change it."""
    applied = applied_versions(db)
    pending = [m.version for m in migrations if m.version not in applied]
    if not applied or not pending:
        return  # a new database has nothing to lose; an up-to-date one is not changed
    try:
        copy_aside(db, path, max(applied), max(pending))
    except Exception as exc:
        if is_disk_full(exc):
            raise InsufficientStorage.at(
                path.parent, f"cannot copy {path.name} aside before migrating its schema"
            ) from exc
        raise
