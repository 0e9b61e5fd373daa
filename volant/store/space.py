"""A full disk under the state database: how to tell, and the reserve that lets a failed
request still clean up after itself.

Once the filesystem is full SQLite cannot write anything, not even the DELETE that undoes the
first half of a failed create (its WAL has to grow for that too). So the store keeps a reserve:
a file of RESERVE_BYTES next to the database. When a write finds the disk full the store gives
the reserve up, and the undo steps and events that follow have room. Requests that add something
new (a VM, a plugin) first take the reserve back; while they cannot, they fail at once with
InsufficientStorage, before anything is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from volant.model import InsufficientStorage
from volant.model.errors import DISK_FULL_ERRNOS

log = logging.getLogger(__name__)

RESERVE_BYTES = 1024 * 1024
RESERVE_SUFFIX = ".reserve"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and what it was raised from or while handling, and the driver errors peewee wraps
    (it re-raises SQLite's errors as its own, keeping the original as the first argument)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = current.args[0] if current.args else None
        pending.extend(
            e
            for e in (current.__context__, current.__cause__, wrapped)
            if isinstance(e, BaseException)
        )


def is_disk_full(exc: BaseException) -> bool:
    """True when exc or one of its causes says the disk is full. A failed COMMIT's ROLLBACK may
    fail in turn ("no transaction is active": SQLite rolled back already), so the SQLITE_FULL
    that started it can sit a few links down."""
    for cause in causes(exc):
        code = getattr(cause, "sqlite_errorcode", None)  # set on errors from SQLite itself
        if isinstance(cause, sqlite3.Error) and code == sqlite3.SQLITE_FULL:
            return True
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return True
    return False


def full_error(db_path: Path) -> InsufficientStorage:
    return InsufficientStorage.at(db_path.parent, f"cannot write the state database {db_path.name}")


class Reserve:
    """The spare file that keeps room for clean-ups when the state directory fills up.

    Used only on the store's thread (it is not locked).
    """

    def __init__(self, db_path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = db_path.with_name(db_path.name + RESERVE_SUFFIX)
        self.size = size

    def ensure(self) -> bool:
        """Make sure the reserve is there, making it when it is not; False when there is no
        room for it."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size >= self.size:
                return True
        # Allocated under another name and renamed, so a reserve that is there is complete.
        staging = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
            os.replace(staging, self.path)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            if exc.errno in DISK_FULL_ERRNOS:
                return False
            raise
        return True

    def release(self) -> bool:
        """Give the reserve's space back to the filesystem; True when there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "the state directory %s is full: released the %d KiB reserve so that requests can "
            "clean up; new VMs and plugins are refused until there is room for it again",
            self.path.parent,
            self.size // 1024,
        )
        return True
