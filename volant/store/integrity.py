"""The state database's integrity check at start, and what to tell the operator when it fails.

volantd runs SQLite's `PRAGMA quick_check` on an existing database before it migrates or uses
it, and refuses to run on one that fails: a daemon that carried on could lose track of running
VMs, or write more damage on top.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import peewee

from volant.model import StateCorrupt
from volant.store.backup import backups
from volant.store.rows import run_sql
from volant.store.space import causes

# quick_check lists at most this many problems; the message shows them all.
SHOWN = 3
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_corrupt(exc: BaseException) -> bool:
    """True when exc or one of its causes is SQLite finding a damaged or foreign file."""
    return any(
        isinstance(cause, sqlite3.Error)
        and getattr(cause, "sqlite_errorcode", None) in _CORRUPT_CODES
        for cause in causes(exc)
    )


def check_integrity(db: peewee.SqliteDatabase, path: Path) -> None:
    """Raise StateCorrupt when quick_check finds path damaged (or cannot even read it)."""
    try:
        rows = run_sql(db, f"PRAGMA quick_check({SHOWN})")
    except peewee.DatabaseError as exc:
        if is_corrupt(exc):
            raise corrupt(path, [str(exc)]) from exc
        raise
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        raise corrupt(path, problems)


def corrupt(path: Path, problems: list[str]) -> StateCorrupt:
    """The error: the file, SQLite's findings, and the operator's ways out."""
    copies = backups(path)
    if copies:
        restore = (
            f"restore the copy made before the last schema migration (`cp -p {copies[0].path} "
            f"{path}`; what changed since that copy is lost)"
        )
    else:
        restore = "put a backup of your own in its place (no copy from before a migration is there)"
    hint = (
        f"stop volantd and move {path.name}, {path.name}-wal and {path.name}-shm in "
        f"{path.parent} aside; then {restore}, or start volantd on an empty database, which "
        "forgets every VM and plugin the damaged one held (and stops the guests it finds no "
        "record of)"
    )
    # quick_check puts a "*** in database main ***" line before its findings.
    lines = (line.strip() for problem in problems for line in problem.splitlines())
    findings = "; ".join(line for line in lines if line and not line.startswith("***"))
    return StateCorrupt(
        f"the state database {path} is corrupt (SQLite's quick_check: {findings}); "
        "volantd does not run on a damaged database",
        hint=hint,
    )
