"""SqliteStore on a real SQLite file: schema, pool, transactions, events, threading."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import peewee
import pytest

from volant.engine.ports import Store
from volant.model import (
    EventType,
    InvalidArgument,
    NameTaken,
    NotFound,
    PoolExhausted,
    Unavailable,
    VMSpec,
    VMStatus,
)
from volant.store import MIGRATIONS, Migration, SqliteStore
from volant.store.rows import run_sql

pytestmark = pytest.mark.unit

SUBNET = IPv4Network("192.168.127.0/24")
HOST = IPv4Address("192.168.127.1")


def mac(name: str, ip: str | None) -> str:
    """Distinct per VM, like volant.network.mac_for (tested in test_mac.py)."""
    digest = hashlib.blake2b(f"{name}/{ip}".encode(), digest_size=4).digest()
    return "02:56:" + ":".join(f"{byte:02x}" for byte in digest)


def spec(name: str) -> VMSpec:
    return VMSpec(name=name, plugin="caddy", cpu_cores=1, memory_mb=256)


async def create(store: SqliteStore, name: str, *, lease_ip: bool = True) -> str | None:
    vm = await store.create_vm(spec(name), runtime="qemu", unit="", mac_for=mac, lease_ip=lease_ip)
    return vm.ip_address


async def add_plugin(store: SqliteStore) -> None:
    """VMs need an installed plugin; the store does not parse manifests, so any JSON does."""
    await store.add_plugin("{}", "caddy", "1.0", "caddy", "sha256:" + "0" * 64)


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the file through a separate connection, as an operator's sqlite3 shell would."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "state.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(db_path)
    await store.ensure_pool(SUBNET, {HOST})
    await add_plugin(store)
    try:
        yield store
    finally:
        await store.close()


# -- opening, pragmas, migrations -------------------------------------------------------------


def test_satisfies_the_store_port(store: SqliteStore) -> None:
    port: Store = store  # checked by mypy: SqliteStore matches the Protocol structurally
    assert port is store


async def test_open_creates_directories_and_uses_wal(store: SqliteStore, db_path: Path) -> None:
    assert db_path.is_file()
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"vms", "ip_allocations", "plugins", "events", "schema_migrations"} <= tables
    assert "events_vm" in tables


async def test_connection_pragmas(store: SqliteStore) -> None:
    # White-box: per-connection pragmas are only visible on the store's own connection.
    def pragmas() -> list[object]:
        names = ("foreign_keys", "synchronous", "busy_timeout")
        return [run_sql(store._db, f"PRAGMA {name}")[0][0] for name in names]

    assert await store._call(pragmas) == [1, 1, 5000]  # synchronous=1 is NORMAL


async def test_reopen_applies_nothing(db_path: Path) -> None:
    await (await SqliteStore.open(db_path)).close()
    first = query(db_path, "SELECT version, name, applied_at FROM schema_migrations")
    assert [row[:2] for row in first] == [(m.version, m.name) for m in MIGRATIONS]
    await (await SqliteStore.open(db_path)).close()
    assert query(db_path, "SELECT version, name, applied_at FROM schema_migrations") == first


async def test_new_migration_is_applied_once(db_path: Path) -> None:
    await (await SqliteStore.open(db_path)).close()
    # ALTER TABLE ADD COLUMN fails when run twice, so a second run would raise.
    nxt = MIGRATIONS[-1].version + 1
    extra = (*MIGRATIONS, Migration(nxt, "vm notes", ("ALTER TABLE vms ADD COLUMN notes TEXT",)))
    for _ in range(2):
        await (await SqliteStore.open(db_path, migrations=extra)).close()
    versions = query(db_path, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(m.version,) for m in extra]
    columns = [row[1] for row in query(db_path, "PRAGMA table_info(vms)")]
    assert columns.count("notes") == 1


async def test_failed_migration_rolls_back(db_path: Path) -> None:
    nxt = MIGRATIONS[-1].version + 1
    broken = (*MIGRATIONS, Migration(nxt, "broken", ("CREATE TABLE t (x)", "NOT SQL AT ALL")))
    with pytest.raises(peewee.OperationalError):
        await SqliteStore.open(db_path, migrations=broken)
    versions = query(db_path, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]
    assert query(db_path, "SELECT name FROM sqlite_master WHERE name = 't'") == []
    await (await SqliteStore.open(db_path)).close()


async def test_migrations_must_be_ordered(db_path: Path) -> None:
    shuffled = (Migration(2, "b", ()), Migration(1, "a", ()))
    with pytest.raises(ValueError, match="out of order"):
        await SqliteStore.open(db_path, migrations=shuffled)


async def test_closed_store_refuses_calls(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    queued = asyncio.ensure_future(store.list_vms())
    await asyncio.sleep(0)  # let it reach the store thread's queue
    await store.close()
    assert await queued == []  # a call queued before close still completes
    await store.close()
    with pytest.raises(Unavailable):
        await store.list_vms()


async def test_state_survives_reopen(db_path: Path) -> None:
    async with await SqliteStore.open(db_path) as store:
        await store.ensure_pool(SUBNET, {HOST})
        await add_plugin(store)
        await create(store, "web")
    async with await SqliteStore.open(db_path) as store:
        assert (await store.get_vm("web")).ip_address == "192.168.127.2"
        assert await store.pool_usage() == (1, 253)


# -- the IP pool ------------------------------------------------------------------------------


async def test_pool_excludes_network_broadcast_and_host(store: SqliteStore) -> None:
    assert await store.ensure_pool(SUBNET, {HOST}) == 253
    assert await store.pool_usage() == (0, 253)
    addresses = {ip for (ip,) in query(store.path, "SELECT ip_address FROM ip_allocations")}
    assert not addresses & {"192.168.127.0", "192.168.127.1", "192.168.127.255"}


async def test_leases_in_numeric_order(store: SqliteStore) -> None:
    ips = [await create(store, f"vm{i}") for i in range(12)]
    assert ips == [f"192.168.127.{n}" for n in range(2, 14)]  # .9, then .10, not .100


async def test_ensure_pool_is_idempotent_and_keeps_leases(store: SqliteStore) -> None:
    await create(store, "web")
    assert await store.ensure_pool(SUBNET, {HOST}) == 253
    assert await store.pool_usage() == (1, 253)


async def test_subnet_change_drops_free_keeps_leased(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await create(store, "old")
    new = IPv4Network("10.9.0.0/29")
    with caplog.at_level(logging.WARNING, logger="volant.store"):
        assert await store.ensure_pool(new, {IPv4Address("10.9.0.1")}) == 5
    assert "192.168.127.2" in caplog.text
    assert await store.pool_usage() == (1, 6)
    assert await create(store, "new") == "10.9.0.2"
    await store.delete_vm("old")
    await store.ensure_pool(new, {IPv4Address("10.9.0.1")})
    assert await store.pool_usage() == (1, 5)


async def test_changed_exclusion_is_applied(store: SqliteStore) -> None:
    await store.ensure_pool(SUBNET, {IPv4Address("192.168.127.2")})
    assert await create(store, "web") == "192.168.127.1"
    assert await create(store, "db") == "192.168.127.3"


async def test_oversized_pool_is_refused(store: SqliteStore) -> None:
    with pytest.raises(InvalidArgument, match="too large"):
        await store.ensure_pool(IPv4Network("10.0.0.0/8"), set())


async def test_exhaustion_leaves_nothing_behind(db_path: Path) -> None:
    async with await SqliteStore.open(db_path) as store:
        assert await store.ensure_pool(IPv4Network("10.0.0.0/29"), {IPv4Address("10.0.0.1")}) == 5
        await add_plugin(store)
        for i in range(5):
            await create(store, f"vm{i}")
        with pytest.raises(PoolExhausted) as caught:
            await create(store, "one-too-many")
        assert caught.value.wire.http_status == 409
        assert "5 of 5" in str(caught.value)
        with pytest.raises(NotFound):
            await store.get_vm("one-too-many")
        assert len(await store.list_vms()) == 5
        assert await store.pool_usage() == (5, 5)


async def test_duplicate_name_does_not_consume_a_lease(store: SqliteStore) -> None:
    assert await create(store, "web") == "192.168.127.2"
    with pytest.raises(NameTaken, match="web"):
        await create(store, "web")
    assert await store.pool_usage() == (1, 253)
    assert await create(store, "db") == "192.168.127.3"


async def test_failure_inside_create_rolls_back(store: SqliteStore) -> None:
    def broken_mac(name: str, ip: str | None) -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.create_vm(spec("web"), runtime="qemu", unit="", mac_for=broken_mac)
    assert await store.list_vms() == []
    assert await store.pool_usage() == (0, 253)


async def test_create_without_lease(store: SqliteStore) -> None:
    seen: list[str | None] = []

    def recording_mac(name: str, ip: str | None) -> str:
        seen.append(ip)
        return mac(name, ip)

    vm = await store.create_vm(
        spec("dhcp"), runtime="qemu", unit="u", mac_for=recording_mac, lease_ip=False
    )
    assert (vm.ip_address, seen, vm.unit) == (None, [None], "u")
    assert await store.pool_usage() == (0, 253)


async def test_delete_releases_the_lease(store: SqliteStore) -> None:
    await create(store, "a")
    await create(store, "b")
    await store.delete_vm("a")
    assert await store.pool_usage() == (1, 253)
    assert await create(store, "c") == "192.168.127.2"
    with pytest.raises(NotFound, match="'a'"):
        await store.delete_vm("a")
    rows = query(store.path, "SELECT vm_id, leased_at FROM ip_allocations WHERE status = 'free'")
    assert all(row == (None, None) for row in rows)


async def test_concurrent_creates_never_share_an_address(store: SqliteStore) -> None:
    ips = await asyncio.gather(*(create(store, f"vm{i:02d}") for i in range(20)))
    assert sorted(ips, key=lambda ip: IPv4Address(ip or "0.0.0.0")) == [
        f"192.168.127.{n}" for n in range(2, 22)
    ]
    assert await store.pool_usage() == (20, 253)


# -- VM rows ----------------------------------------------------------------------------------


async def test_create_returns_a_frozen_model(store: SqliteStore) -> None:
    vm = await store.create_vm(spec("web"), runtime="qemu", unit="", mac_for=mac)
    assert vm == await store.get_vm("web")
    assert (vm.status, vm.pid, vm.mac, vm.runtime) == (
        VMStatus.CREATING,
        None,
        mac("web", vm.ip_address),
        "qemu",
    )
    assert vm.created_at.tzinfo is UTC
    assert vm.created_at == vm.updated_at


async def test_get_missing_vm(store: SqliteStore) -> None:
    with pytest.raises(NotFound, match="no VM named 'ghost'"):
        await store.get_vm("ghost")


async def test_list_is_ordered_by_name(store: SqliteStore) -> None:
    for name in ("web", "api", "db"):
        await create(store, name)
    assert [vm.name for vm in await store.list_vms()] == ["api", "db", "web"]


async def test_update_changes_fields_and_bumps_updated_at(store: SqliteStore) -> None:
    before = await store.create_vm(spec("web"), runtime="qemu", unit="", mac_for=mac)
    after = await store.update_vm(
        "web", status=VMStatus.RUNNING, pid=4242, unit="volant-vm-web.scope", kernel_cmdline="x"
    )
    assert (after.status, after.pid, after.unit, after.kernel_cmdline) == (
        VMStatus.RUNNING,
        4242,
        "volant-vm-web.scope",
        "x",
    )
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at
    assert await store.get_vm("web") == after
    cleared = await store.update_vm("web", status=VMStatus.STOPPED, pid=None)
    assert cleared.pid is None


@pytest.mark.parametrize(
    "fields",
    [{"name": "other"}, {"ip_address": "10.0.0.9"}, {"status": "running"}, {"pid": "12"}],
)
async def test_update_rejects_bad_fields(store: SqliteStore, fields: dict[str, object]) -> None:
    before = await store.create_vm(spec("web"), runtime="qemu", unit="", mac_for=mac)
    with pytest.raises(TypeError):
        await store.update_vm("web", **fields)
    assert await store.get_vm("web") == before


async def test_update_missing_vm(store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        await store.update_vm("ghost", status=VMStatus.RUNNING)


# -- events -----------------------------------------------------------------------------------


async def test_event_ids_increase_and_list_in_order(store: SqliteStore) -> None:
    first = await store.append_event(EventType.VM_CREATED, "web", {"ip_address": "192.168.127.2"})
    second = await store.append_event(EventType.VM_RUNNING, "web")
    third = await store.append_event(EventType.VM_DELETED, "db", {"reason": "asked"})
    assert first.id < second.id < third.id
    assert first.ts.tzinfo is UTC
    assert await store.list_events() == [first, second, third]
    assert await store.list_events(after_id=first.id) == [second, third]
    assert await store.list_events(after_id=first.id, limit=1) == [second]
    assert second.payload == {}
    with pytest.raises(InvalidArgument):
        await store.list_events(limit=0)


async def test_unencodable_payload_fails_before_writing(store: SqliteStore) -> None:
    with pytest.raises(TypeError):
        await store.append_event(EventType.VM_CREATED, "web", {"bad": object()})
    assert await store.list_events() == []


# -- the event loop is never blocked ----------------------------------------------------------


async def test_every_query_runs_on_the_store_thread(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="peewee")  # peewee logs each statement it executes
    async with await SqliteStore.open(db_path) as store:
        await store.ensure_pool(SUBNET, {HOST})
        await add_plugin(store)
        await asyncio.gather(*(create(store, f"vm{i}") for i in range(5)))
        await store.update_vm("vm0", status=VMStatus.RUNNING)
        await store.append_event(EventType.VM_RUNNING, "vm0")
        await store.list_events()
        await store.list_vms()
        await store.pool_usage()
        await store.delete_vm("vm1")
    statements = [r for r in caplog.records if r.name == "peewee"]
    assert len(statements) > 20
    assert {r.thread for r in statements}.isdisjoint({threading.get_ident()})
    assert len({r.thread for r in statements}) == 1
    assert all((r.threadName or "").startswith("volant-store") for r in statements)


async def test_database_refuses_use_from_another_thread(store: SqliteStore) -> None:
    with pytest.raises(peewee.InterfaceError):
        run_sql(store._db, "SELECT 1")


# -- agent secrets and isolation (migration 4) ----------------------------------------------


async def test_secret_and_isolation_are_recorded_but_never_shown(store: SqliteStore) -> None:
    secret = "s" * 43
    isolated = VMSpec(name="web", plugin="caddy", cpu_cores=1, memory_mb=256, isolated=True)
    vm = await store.create_vm(isolated, runtime="qemu", unit="", mac_for=mac, agent_secret=secret)
    assert (vm.agent_secret, vm.isolated) == (secret, True)
    assert await store.get_vm("web") == vm
    assert vm.to_dict()["isolated"] is True
    assert secret not in json.dumps(vm.to_dict())
    assert secret not in repr(vm)
    await create(store, "open")
    assert ((await store.get_vm("open")).agent_secret, (await store.get_vm("open")).isolated) == (
        "",
        False,
    )


async def test_vms_from_before_secrets_get_one_by_update(db_path: Path) -> None:
    """A VM recorded before migration 4 has no secret and is not isolated; the engine gives it
    a secret at its next start through update_vm."""
    await (await SqliteStore.open(db_path, migrations=MIGRATIONS[:3])).close()
    with sqlite3.connect(db_path) as conn:  # as the release before secrets wrote it
        conn.execute(
            "INSERT INTO vms (name, status, mac, cpu_cores, memory_mb, plugin, runtime, "
            "created_at, updated_at) VALUES ('veteran', 'stopped', '02:56:00:00:00:01', 1, 256, "
            "'caddy', 'qemu', '2024-01-01T00:00:00.000000+00:00', "
            "'2024-01-01T00:00:00.000000+00:00')"
        )
    store = await SqliteStore.open(db_path)
    try:
        assert query(db_path, "SELECT version FROM schema_migrations WHERE version = 4") == [(4,)]
        vm = await store.get_vm("veteran")
        assert (vm.agent_secret, vm.isolated) == ("", False)
        updated = await store.update_vm("veteran", agent_secret="fresh")
        assert (await store.get_vm("veteran")).agent_secret == updated.agent_secret == "fresh"
    finally:
        await store.close()
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE vms SET isolated = 2")
