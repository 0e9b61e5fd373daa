"""The state database's safety nets on real SQLite files: the integrity check at open (on
files damaged by overwriting pages in the middle), the copy made before a migration, and the
reserve that keeps room for clean-ups."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from volant.model import ErrorCode, EventType, InsufficientStorage, StateCorrupt, VMSpec
from volant.store import MIGRATIONS, Migration, SqliteStore
from volant.store.backup import KEEP, backups
from volant.store.rows import run_sql
from volant.store.space import RESERVE_BYTES, is_disk_full

pytestmark = pytest.mark.unit

SUBNET = IPv4Network("192.168.127.0/24")
PAGE = 4096


def mac(name: str, ip: str | None) -> str:
    digest = hashlib.blake2b(f"{name}/{ip}".encode(), digest_size=4).digest()
    return "02:56:" + ":".join(f"{byte:02x}" for byte in digest)


async def fill(path: Path, migrations: tuple[Migration, ...] = MIGRATIONS, vms: int = 3) -> None:
    """A database with a pool, a plugin, a few VMs and enough events to span many pages."""
    store = await SqliteStore.open(path, migrations=migrations)
    try:
        await store.ensure_pool(SUBNET, {IPv4Address("192.168.127.1")})
        await store.add_plugin("{}", "demo", "1.0", "qemu", "sha256:" + "0" * 64)
        for i in range(vms):
            spec = VMSpec(name=f"vm{i}", plugin="demo", cpu_cores=1, memory_mb=128)
            await store.create_vm(spec, runtime="qemu", unit="", mac_for=mac)
        for i in range(400):
            await store.append_event(EventType.VM_CREATED, f"vm{i % vms}", {"note": "x" * 200})
    finally:
        await store.close()  # the last connection's close checkpoints the WAL into the file


def damage(path: Path, first_page: int, pages: int = 3) -> None:
    """Overwrite whole pages with bytes no b-tree page holds, as a torn write or a bad disk
    would leave them."""
    with path.open("r+b") as db:
        db.seek(first_page * PAGE)
        db.write(bytes(range(256)) * (pages * PAGE // 256))


def versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def names(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [n for (n,) in conn.execute("SELECT name FROM vms ORDER BY name")]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


# -- integrity check at open --------------------------------------------------------------------


async def test_pages_overwritten_in_the_middle_are_refused(db_path: Path) -> None:
    await fill(db_path)
    size = db_path.stat().st_size // PAGE
    assert size > 30
    damage(db_path, size // 2)
    with pytest.raises(StateCorrupt) as caught:
        await SqliteStore.open(db_path)
    error = caught.value
    assert error.code is ErrorCode.UNAVAILABLE
    assert error.message.startswith(f"the state database {db_path} is corrupt (SQLite's ")
    assert "quick_check: Page " in error.message
    assert error.message.endswith("); volantd does not run on a damaged database")
    # No copy from before a migration: the hint says so and offers the two ways out.
    assert "\n" not in error.message
    assert error.hint == (
        f"stop volantd and move state.db, state.db-wal and state.db-shm in {db_path.parent} "
        "aside; then put a backup of your own in its place (no copy from before a migration is "
        "there), or start volantd on an empty database, which forgets every VM and plugin the "
        "damaged one held (and stops the guests it finds no record of)"
    )


async def test_a_file_that_is_no_database_is_refused(db_path: Path) -> None:
    await fill(db_path, vms=1)
    damage(db_path, 0, pages=1)  # the header with its magic string
    with pytest.raises(StateCorrupt, match="file is not a database"):
        await SqliteStore.open(db_path)


async def test_a_sound_database_opens_and_a_new_one_is_not_checked(db_path: Path) -> None:
    await fill(db_path)
    store = await SqliteStore.open(db_path)
    assert [vm.name for vm in await store.list_vms()] == ["vm0", "vm1", "vm2"]
    await store.close()


# -- copies before a migration -----------------------------------------------------------------


def extra(*numbers: int) -> tuple[Migration, ...]:
    """MIGRATIONS plus one small table per number, numbered far above the real ones."""
    added = tuple(Migration(100 + n, f"table t{n}", (f"CREATE TABLE t{n} (x)",)) for n in numbers)
    return (*MIGRATIONS, *added)


async def test_an_existing_database_is_copied_before_it_is_migrated(db_path: Path) -> None:
    await fill(db_path)
    db_path.chmod(0o640)
    store = await SqliteStore.open(db_path, migrations=extra(1))
    await store.close()
    before = MIGRATIONS[-1].version
    copy = db_path.with_name(f"state.db.pre-migration-{before}-to-101")
    assert [b.path for b in backups(db_path)] == [copy]
    assert copy.stat().st_mode & 0o777 == 0o640
    # A whole database of the schema before, with the data; the live one moved on.
    assert versions(copy) == [m.version for m in MIGRATIONS]
    assert names(copy) == ["vm0", "vm1", "vm2"]
    assert versions(db_path) == [*(m.version for m in MIGRATIONS), 101]
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not list(db_path.parent.glob(".*tmp"))


async def test_no_copy_of_a_new_or_an_up_to_date_database(db_path: Path) -> None:
    await (await SqliteStore.open(db_path, migrations=extra(1))).close()
    await (await SqliteStore.open(db_path, migrations=extra(1))).close()
    assert backups(db_path) == []


async def test_only_the_newest_copies_are_kept(db_path: Path) -> None:
    await fill(db_path, vms=1)
    for n in range(1, 6):
        await (await SqliteStore.open(db_path, migrations=extra(*range(1, n + 1)))).close()
    kept = [(b.before, b.after) for b in backups(db_path)]
    assert kept == [(104, 105), (103, 104), (102, 103)][:KEEP]


async def test_the_hint_names_the_copy_and_following_it_recovers(db_path: Path) -> None:
    await fill(db_path)
    # migrates, copying aside first
    await (await SqliteStore.open(db_path, migrations=extra(1))).close()
    (copy,) = backups(db_path)
    damage(db_path, db_path.stat().st_size // PAGE // 2)
    with pytest.raises(StateCorrupt) as caught:
        await SqliteStore.open(db_path)
    assert (
        f"restore the copy made before the last schema migration (`cp -p {copy.path} "
        f"{db_path}`; what changed since that copy is lost)" in caught.value.hint
    )

    # What the hint says: the database and its -wal and -shm aside, the copy in its place.
    aside = db_path.parent / "corrupt"
    aside.mkdir()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (db_path.parent / name).exists():
            (db_path.parent / name).rename(aside / name)
    shutil.copy2(copy.path, db_path)
    store = await SqliteStore.open(db_path, migrations=extra(1))
    assert [vm.name for vm in await store.list_vms()] == ["vm0", "vm1", "vm2"]
    await store.close()
    assert versions(db_path) == [m.version for m in extra(1)]


# -- the reserve ------------------------------------------------------------------------------


async def test_the_reserve_is_kept_next_to_the_database(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    reserve = db_path.with_name("state.db.reserve")
    assert reserve.stat().st_size == RESERVE_BYTES
    assert reserve.stat().st_blocks * 512 >= RESERVE_BYTES  # allocated, not a sparse file
    assert reserve.stat().st_mode & 0o777 == 0o600
    reserve.unlink()
    await store.add_plugin("{}", "demo", "1.0", "qemu", "sha256:" + "0" * 64)
    assert reserve.stat().st_size == RESERVE_BYTES  # taken back before adding something
    await store.close()


async def test_a_full_database_is_insufficient_storage(db_path: Path) -> None:
    """SQLite's own SQLITE_FULL, made here by capping the database at its current size."""
    await fill(db_path, vms=1)
    store = await SqliteStore.open(db_path)

    def cap() -> None:
        ((pages,),) = run_sql(store._db, "PRAGMA page_count")
        run_sql(store._db, f"PRAGMA max_page_count = {pages}")

    await store._call(cap)
    reserve = db_path.with_name("state.db.reserve")

    async def grow() -> None:
        for i in range(1000):
            await store.append_event(EventType.VM_CREATED, "vm0", {"note": "y" * 2000, "i": i})

    with pytest.raises(InsufficientStorage) as caught:
        await grow()
    assert caught.value.message == (
        f"cannot write the state database state.db: no space left on device ({db_path.parent})"
    )
    assert f"df -h {db_path.parent}" in caught.value.hint
    assert not reserve.exists()  # given up, so that clean-ups have room
    await store.delete_vm("vm0")  # a clean-up needs no new page
    # Something new takes the reserve back first (the filesystem here has room for it).
    await store.add_plugin("{}", "other", "1.0", "qemu", "sha256:" + "1" * 64)
    assert reserve.exists()
    await store.close()


def test_disk_full_errnos() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert not is_disk_full(OSError(errno.EIO, os.strerror(errno.EIO)))
