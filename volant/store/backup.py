"""Copies of the state database made before a migration changes its schema.

Before volantd applies a migration to an existing database it copies the database aside with
SQLite's online backup API, to `state.db.pre-migration-<from>-to-<to>` in the same directory
(same file mode). The newest KEEP of those copies stay. A copy is a complete database that an
older volantd can open, and that this one migrates again: the way back when a migration, or the
release that brought it, goes wrong.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import peewee

log = logging.getLogger(__name__)

KEEP = 3
_INFIX = ".pre-migration-"


@dataclass(frozen=True)
class Backup:
    """One copy made before migrating from schema version `before` to `after`."""

    path: Path
    before: int
    after: int


def backup_path(db_path: Path, before: int, after: int) -> Path:
    return db_path.with_name(f"{db_path.name}{_INFIX}{before}-to-{after}")


def backups(db_path: Path) -> list[Backup]:
    """The copies next to db_path, newest (highest target version) first."""
    pattern = re.compile(re.escape(db_path.name + _INFIX) + r"(\d+)-to-(\d+)")
    found = []
    for entry in db_path.parent.glob(f"{db_path.name}{_INFIX}*"):
        match = pattern.fullmatch(entry.name)
        if match is not None and entry.is_file():
            found.append(Backup(entry, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda b: (b.after, b.before), reverse=True)


def copy_aside(db: peewee.SqliteDatabase, db_path: Path, before: int, after: int) -> Path:
    """Copy the open database to its pre-migration name; keep the newest KEEP copies.

    Runs on the store's thread, with the store's connection as the source. The copy is written
    under a temporary name, synced and renamed, so a copy that exists is whole.
    """
    final = backup_path(db_path, before, after)
    staging = final.with_name(f".{final.name}.tmp")
    mode = db_path.stat().st_mode & 0o777
    staging.unlink(missing_ok=True)
    # Made with the database's mode from the start: never a moment readable by more users.
    os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode))
    try:
        target = sqlite3.connect(staging)
        try:
            source: sqlite3.Connection = db.connection()  # type: ignore[no-untyped-call]
            source.backup(target)
        finally:
            target.close()
        os.chmod(staging, mode)  # the umask may have narrowed it at creation
        _fsync(staging)
        os.replace(staging, final)
        _fsync(final.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    log.info(
        "copied %s to %s before migrating its schema from version %d to %d",
        db_path,
        final,
        before,
        after,
    )
    for old in backups(db_path)[KEEP:]:
        old.path.unlink(missing_ok=True)
        log.info("removed the old pre-migration copy %s", old.path)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
