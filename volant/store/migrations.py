"""Ordered schema migrations, each applied once inside its own transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import peewee

from volant.store.rows import format_ts, run_sql, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One schema step. Never edit a released one: append a new version instead."""

    version: int
    name: str
    statements: tuple[str, ...]


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
) STRICT
"""

# STRICT tables make SQLite enforce the declared column types (SQLite >= 3.37; Debian 12 has
# 3.40). vms.status carries no CHECK: a new lifecycle state would otherwise need a table rebuild,
# and the store only ever writes VMStatus values.
_INITIAL = (
    """
    CREATE TABLE vms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 63),
        status TEXT NOT NULL,
        pid INTEGER CHECK (pid IS NULL OR pid > 0),
        ip_address TEXT UNIQUE,
        mac TEXT NOT NULL UNIQUE CHECK (length(mac) = 17),
        cpu_cores INTEGER NOT NULL CHECK (cpu_cores > 0),
        memory_mb INTEGER NOT NULL CHECK (memory_mb > 0),
        plugin TEXT NOT NULL,
        runtime TEXT NOT NULL,
        kernel_cmdline TEXT NOT NULL DEFAULT '',
        unit TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE ip_allocations (
        ip_address TEXT PRIMARY KEY,
        ip_num INTEGER NOT NULL UNIQUE CHECK (ip_num >= 0),
        vm_id INTEGER REFERENCES vms(id) ON DELETE SET NULL,
        status TEXT NOT NULL DEFAULT 'free' CHECK (status IN ('free', 'leased')),
        leased_at TEXT,
        CHECK (status = 'leased' OR (vm_id IS NULL AND leased_at IS NULL))
    ) STRICT
    """,
    # Serves "lowest free address in numeric order" without scanning the whole pool.
    "CREATE INDEX ip_allocations_status_num ON ip_allocations(status, ip_num)",
    # Without it every vms delete scans ip_allocations for ON DELETE SET NULL.
    "CREATE INDEX ip_allocations_vm ON ip_allocations(vm_id)",
    """
    CREATE TABLE plugins (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        version TEXT NOT NULL,
        runtime TEXT NOT NULL,
        manifest_json TEXT NOT NULL CHECK (json_valid(manifest_json)),
        digest TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        type TEXT NOT NULL,
        vm TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload))
    ) STRICT
    """,
    "CREATE INDEX events_vm ON events(vm)",
)

# Why a VM is in error or crashed, shown by every front-end; the manifest a VM was created with
# (a plugin upgrade applies to new VMs only); who signed a plugin and where it was installed
# from (relative artifact paths resolve against that location).
_REASONS_AND_PROVENANCE = (
    "ALTER TABLE vms ADD COLUMN status_reason TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE vms ADD COLUMN manifest_json TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE plugins ADD COLUMN signer TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE plugins ADD COLUMN source TEXT NOT NULL DEFAULT ''",
)

# Retention deletes by age every hour; without it each pass scans the whole event log.
_EVENT_AGE = ("CREATE INDEX events_ts ON events(ts)",)

# The secret a VM's agent wants on every request (VMs older than this get one at their next
# start), and whether the VM is cut off from the other guests on the bridge.
_AGENT_SECRET_AND_ISOLATION = (
    "ALTER TABLE vms ADD COLUMN agent_secret TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE vms ADD COLUMN isolated INTEGER NOT NULL DEFAULT 0 CHECK (isolated IN (0, 1))",
)

# Every host resource volantd makes has a record: the intent is written before the host change
# and the outcome after, so a restart after a SIGKILL knows what may exist on the host. A record
# outlives its VM's row until the resource itself is gone (delete removes the row last, but a
# crash can come in between), hence no foreign key.
_HOST_RESOURCES = (
    """
    CREATE TABLE host_resources (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        vm TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('intended', 'present')),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    ) STRICT
    """,
    "CREATE INDEX host_resources_vm ON host_resources(vm)",
)

# Volumes: named sparse files under <state_dir>/volumes that outlive VMs, and which VM mounts
# which volume where. A VM's attachments go with it (CASCADE); a volume cannot go while a VM
# has it (RESTRICT, and the store says so first with a Conflict). formatted: mkfs.ext4 ran on
# the file (at its first attach), so the next attach must not run it again.
_VOLUMES = (
    """
    CREATE TABLE volumes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 20),
        size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
        filesystem TEXT NOT NULL DEFAULT 'ext4',
        formatted INTEGER NOT NULL DEFAULT 0 CHECK (formatted IN (0, 1)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE vm_volumes (
        vm_id INTEGER NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        volume_id INTEGER NOT NULL REFERENCES volumes(id) ON DELETE RESTRICT,
        path TEXT NOT NULL CHECK (substr(path, 1, 1) = '/'),
        read_only INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
        PRIMARY KEY (vm_id, volume_id),
        UNIQUE (vm_id, path)
    ) STRICT
    """,
    "CREATE INDEX vm_volumes_volume ON vm_volumes(volume_id)",
)

# A rootfs VM whose writes go to a tmpfs (lost at stop) rather than to its own disk.
_EPHEMERAL = (
    "ALTER TABLE vms ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0 CHECK (ephemeral IN (0, 1))",
)

# The host ports a VM publishes while it runs, as a JSON list of their short forms
# ("127.0.0.1:8080:80/tcp"): read and written whole with the VM, never queried by port.
_PUBLISH = ("ALTER TABLE vms ADD COLUMN publish TEXT NOT NULL DEFAULT '[]'",)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL),
    Migration(2, "status reasons, VM manifests, plugin provenance", _REASONS_AND_PROVENANCE),
    Migration(3, "index events by time for retention", _EVENT_AGE),
    Migration(4, "agent secrets and guest isolation", _AGENT_SECRET_AND_ISOLATION),
    Migration(5, "records of host resources", _HOST_RESOURCES),
    Migration(6, "volumes and their attachments to VMs", _VOLUMES),
    Migration(7, "ephemeral VMs", _EPHEMERAL),
    Migration(8, "published ports", _PUBLISH),
)


def check_order(migrations: Sequence[Migration]) -> None:
    """Versions must be positive and strictly increasing, or the history is ambiguous."""
    previous = 0
    for migration in migrations:
        if migration.version <= previous:
            raise ValueError(
                f"migration {migration.version} ({migration.name!r}) is out of order: "
                f"versions must increase and start at 1"
            )
        previous = migration.version


def apply_migrations(db: peewee.SqliteDatabase, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not recorded yet; return the versions applied now."""
    check_order(migrations)
    run_sql(db, _BOOTSTRAP)
    applied = _applied_versions(db)
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        with db.atomic():
            # Another process may have applied it between our read and our write lock.
            if migration.version in _applied_versions(db):
                continue
            for statement in migration.statements:
                run_sql(db, statement)
            run_sql(
                db,
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, format_ts(utcnow())),
            )
        log.info("applied schema migration %d: %s", migration.version, migration.name)
        done.append(migration.version)
    unknown = applied - {m.version for m in migrations}
    if unknown:
        log.warning(
            "state database has schema versions %s that this Volant does not know; "
            "was it written by a newer release?",
            sorted(unknown),
        )
    return done


def applied_versions(db: peewee.SqliteDatabase) -> set[int]:
    """The versions recorded so far; empty for a new database, which has no history table."""
    exists = run_sql(
        db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    )
    return _applied_versions(db) if exists else set()


def _applied_versions(db: peewee.SqliteDatabase) -> set[int]:
    return {int(version) for (version,) in run_sql(db, "SELECT version FROM schema_migrations")}
