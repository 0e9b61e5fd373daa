"""SqliteStore's plugin methods on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from volant.model import Conflict, NameTaken, NotFound, VMSpec
from volant.plugins.manifest import load_manifest
from volant.store import SqliteStore
from volant.store.rows import name_some

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/plugins/hello/manifest.json"


def mac(name: str, ip: str | None) -> str:
    return "02:56:00:00:00:" + f"{len(name):02x}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "state.db")
    await store.ensure_pool(IPv4Network("192.168.127.0/24"), {IPv4Address("192.168.127.1")})
    try:
        yield store
    finally:
        await store.close()


async def add_hello(store: SqliteStore, name: str = "hello", enabled: bool = True) -> None:
    manifest = load_manifest(EXAMPLE)
    await store.add_plugin(
        manifest.canonical_json,
        name,
        manifest.version,
        manifest.runtime,
        manifest.digest,
        enabled=enabled,
    )


async def test_add_get_list(store: SqliteStore) -> None:
    manifest = load_manifest(EXAMPLE)
    added = await store.add_plugin(
        manifest.canonical_json, "hello", manifest.version, manifest.runtime, manifest.digest
    )
    assert added.enabled
    assert added.digest == manifest.digest
    got = await store.get_plugin("hello")
    assert got == added
    assert got.manifest_json == manifest.canonical_json
    await add_hello(store, "another", enabled=False)
    listed = await store.list_plugins()
    assert [p.name for p in listed] == ["another", "hello"]
    assert not listed[0].enabled
    assert listed[1].to_dict()["digest"] == manifest.digest


async def test_duplicate_name_is_refused(store: SqliteStore) -> None:
    await add_hello(store)
    with pytest.raises(NameTaken, match="already installed"):
        await add_hello(store)
    assert len(await store.list_plugins()) == 1


async def test_invalid_json_is_refused_by_the_table(store: SqliteStore) -> None:
    with pytest.raises(Conflict):
        await store.add_plugin("{not json", "broken", "1", "r", "sha256:00")
    with pytest.raises(NotFound):
        await store.get_plugin("broken")


async def test_set_enabled(store: SqliteStore) -> None:
    await add_hello(store)
    before = await store.get_plugin("hello")
    disabled = await store.set_plugin_enabled("hello", False)
    assert not disabled.enabled
    assert disabled.updated_at > before.updated_at
    assert not (await store.get_plugin("hello")).enabled
    same = await store.set_plugin_enabled("hello", False)
    assert same.updated_at == disabled.updated_at
    assert (await store.set_plugin_enabled("hello", True)).enabled
    with pytest.raises(NotFound):
        await store.set_plugin_enabled("absent", True)


async def test_delete(store: SqliteStore, tmp_path: Path) -> None:
    await add_hello(store)
    await store.delete_plugin("hello")
    with pytest.raises(NotFound):
        await store.get_plugin("hello")
    with pytest.raises(NotFound):
        await store.delete_plugin("hello")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM plugins").fetchone() == (0,)


async def test_delete_refused_while_a_vm_uses_it(store: SqliteStore) -> None:
    await add_hello(store)
    spec = VMSpec(name="web", plugin="hello", cpu_cores=1, memory_mb=256)
    await store.create_vm(spec, runtime="qemu", unit="", mac_for=mac)
    with pytest.raises(Conflict, match="used by VM\\(s\\) web") as caught:
        await store.delete_plugin("hello")
    assert "delete those VMs" in caught.value.hint
    assert (await store.get_plugin("hello")).name == "hello"
    await store.delete_vm("web")
    await store.delete_plugin("hello")
    assert await store.list_plugins() == []


def test_a_refused_delete_names_five_vms_then_counts() -> None:
    assert name_some(["a", "b"]) == "a, b"
    names = [f"vm{i}" for i in range(8)]
    assert name_some(names) == "vm0, vm1, vm2, vm3, vm4 and 3 more"
