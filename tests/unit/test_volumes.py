"""Volumes: size and name rules, the store's records on a real SQLite file, real sparse files
with real mkfs.ext4 / resize2fs, and the service's one-running-VM rule."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from volant.cli.output import volume_details, volume_table
from volant.engine.faults import Faults
from volant.engine.ledger import Ledger
from volant.engine.volumes import Volumes
from volant.model import (
    Conflict,
    InvalidArgument,
    InvalidState,
    NameTaken,
    NotFound,
    ResourceKind,
    VMSpec,
    VMStatus,
    VolumeMount,
    parse_size,
    validate_mounts,
    validate_volume_name,
)
from volant.model.volumes import format_size, parse_volume_option, validate_mount_path
from volant.storage.volumes import VolumeDir
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

G = 1024**3
M = 1024**2


# -- rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1G", G),
        ("1g", G),
        ("1GiB", G),
        ("512M", 512 * M),
        ("16M", 16 * M),
        ("2T", 2 * 1024**4),
        ("8T", 8 * 1024**4),
        (str(G), G),
        (G, G),
        ("20000K", 20 * M),  # 19.53 MiB, rounded up to a whole MiB
        (17 * M + 1, 18 * M),
        (8 * 1024**4, 8 * 1024**4),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "1.5G", "-1G", "1X", "G", "15M", "9T", 16 * M - 1, True, None, "1 G B"]
)
def test_bad_sizes_name_the_field(text: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_size(text)
    assert caught.value.field == "size"


def test_format_size() -> None:
    assert [format_size(s) for s in (G, 1536 * M, 17 * 1024, 5)] == ["1G", "1536M", "17K", "5"]


@pytest.mark.parametrize("name", ["data", "a", "pg-data-01", "x" * 20])
def test_good_names(name: str) -> None:
    assert validate_volume_name(name) == name


@pytest.mark.parametrize("name", ["", "Data", "-a", "a-", "x" * 21, "volant-config", "a_b", 3])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidArgument, match="volume name"):
        validate_volume_name(name)


@pytest.mark.parametrize(
    ("path", "normal"), [("/srv", "/srv"), ("/var/lib/pg/", "/var/lib/pg"), ("//data", "/data")]
)
def test_mount_paths(path: str, normal: str) -> None:
    assert validate_mount_path(path) == normal


@pytest.mark.parametrize(
    "path", ["", "srv", "/", "//", "/proc", "/srv/../etc", "/a/./b", "/a b", "/a:b", "/tmp"]
)
def test_bad_mount_paths(path: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_mount_path(path)


def test_a_volume_attached_twice_is_refused() -> None:
    twice = [VolumeMount("data", "/a"), VolumeMount("data", "/b")]
    with pytest.raises(InvalidArgument, match="attached twice") as caught:
        validate_mounts(twice)
    assert caught.value.field == "volumes"
    with pytest.raises(InvalidArgument, match="two volumes are mounted at /a"):
        validate_mounts([VolumeMount("one", "/a"), VolumeMount("two", "/a/")])


def test_volume_option() -> None:
    assert parse_volume_option("data:/srv") == VolumeMount("data", "/srv", False)
    assert parse_volume_option("data:/srv:ro") == VolumeMount("data", "/srv", True)
    assert parse_volume_option("data:/srv:rw") == VolumeMount("data", "/srv", False)
    for bad in ("data", "data:srv", "data:/srv:rx", "Data:/srv", "data:/"):
        with pytest.raises(InvalidArgument):
            parse_volume_option(bad)


# -- store ----------------------------------------------------------------------------------


def mac(name: str, ip: str | None) -> str:
    digest = hashlib.blake2b(f"{name}/{ip}".encode(), digest_size=4).digest()
    return "02:56:" + ":".join(f"{byte:02x}" for byte in digest)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with await SqliteStore.open(tmp_path / "state.db") as opened:
        await opened.add_plugin("{}", "demo", "1.0", "demo", "sha256:" + "0" * 64)
        yield opened


async def new_vm(store: SqliteStore, name: str, *mounts: VolumeMount) -> None:
    spec = VMSpec(name=name, plugin="demo", cpu_cores=1, memory_mb=128, volumes=mounts)
    await store.create_vm(spec, runtime="qemu", unit="", mac_for=mac, lease_ip=False)


async def test_store_records_volumes_and_attachments(store: SqliteStore) -> None:
    volumes = store.volumes
    created = await volumes.create_volume("data", G)
    assert (created.name, created.size_bytes, created.formatted) == ("data", G, False)
    with pytest.raises(NameTaken):
        await volumes.create_volume("data", G)
    await new_vm(store, "db", VolumeMount("data", "/srv", True))
    got = await volumes.get_volume("data")
    assert [(a.vm, a.path, a.read_only, a.vm_status) for a in got.attachments] == [
        ("db", "/srv", True, "creating")
    ]
    assert await volumes.vm_volumes("db") == [VolumeMount("data", "/srv", True)]
    assert (await volumes.vm_state("db") or ("",))[0] == "creating"
    assert await volumes.vm_state("nobody") is None
    with pytest.raises(Conflict, match="attached to VM\\(s\\) db"):
        await volumes.delete_volume("data")
    # A VM's attachments go with it; the volume stays.
    await store.delete_vm("db")
    assert (await volumes.get_volume("data")).attachments == ()
    updated = await volumes.update_volume("data", size_bytes=2 * G, formatted=True)
    assert (updated.size_bytes, updated.formatted) == (2 * G, True)
    await volumes.delete_volume("data")
    assert await volumes.list_volumes() == []
    with pytest.raises(NotFound):
        await volumes.get_volume("data")


async def test_a_vm_with_an_unknown_volume_is_not_created(store: SqliteStore) -> None:
    with pytest.raises(NotFound, match="no volume named 'nope'") as caught:
        await new_vm(store, "db", VolumeMount("nope", "/srv"))
    assert caught.value.field == "volumes"
    assert await store.list_vms() == []


# -- files ----------------------------------------------------------------------------------


def dumpe2fs(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dumpe2fs", "-h", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


async def test_files_are_sparse_ext4_and_grow(tmp_path: Path) -> None:
    files = VolumeDir(tmp_path / "volumes")
    await files.create("data", 64 * M)
    with pytest.raises(FileExistsError):
        await files.create("data", 64 * M)
    size, allocated = await files.stat("data") or (0, 0)
    assert (size, allocated) == (64 * M, 0)
    await files.format("data")
    info = dumpe2fs(files.path("data"))
    assert info["Filesystem volume name"] == "data"
    assert int(info["Block count"]) * int(info["Block size"]) == 64 * M
    _size, allocated = await files.stat("data") or (0, 0)
    assert 0 < allocated < 16 * M  # formatted, still mostly holes
    await files.grow("data", 128 * M)
    await files.grow_fs("data")
    info = dumpe2fs(files.path("data"))
    assert int(info["Block count"]) * int(info["Block size"]) == 128 * M
    assert await files.scan() == {str(files.path("data")): "data"}
    await files.remove("data")
    assert await files.stat("data") is None


# -- the service ------------------------------------------------------------------------------


@dataclass
class Rig:
    store: SqliteStore
    volumes: Volumes
    files: VolumeDir


@pytest.fixture
async def rig(store: SqliteStore, tmp_path: Path) -> Rig:
    files = VolumeDir(tmp_path / "volumes")
    return Rig(store, Volumes(store.volumes, Ledger(store), files, Faults()), files)


async def test_create_records_the_file_and_delete_removes_it(rig: Rig) -> None:
    volume = await rig.volumes.create_volume("data", "32M")
    assert (volume.size_bytes, volume.allocated_bytes, volume.missing) == (32 * M, 0, False)
    records = await rig.store.list_resources()
    assert [(r.kind, r.name, r.vm) for r in records] == [
        (ResourceKind.VOLUME, str(rig.files.path("data")), "")
    ]
    await rig.volumes.delete_volume("data")
    assert await rig.store.list_resources() == []
    assert await rig.files.stat("data") is None


async def test_a_file_in_the_way_is_left_alone(rig: Rig) -> None:
    rig.files.root.mkdir()
    rig.files.path("data").write_bytes(b"precious")
    with pytest.raises(Conflict, match="in the way"):
        await rig.volumes.create_volume("data", "32M")
    assert rig.files.path("data").read_bytes() == b"precious"
    assert await rig.store.volumes.list_volumes() == []


async def test_resize_grows_only(rig: Rig) -> None:
    await rig.volumes.create_volume("data", "32M")
    with pytest.raises(InvalidArgument, match="only grow") as caught:
        await rig.volumes.resize_volume("data", "16M")
    assert caught.value.field == "size"
    grown = await rig.volumes.resize_volume("data", "64M")
    assert grown.size_bytes == 64 * M
    assert (await rig.files.stat("data") or (0,))[0] == 64 * M


async def test_one_running_vm_at_a_time(rig: Rig) -> None:
    await rig.volumes.create_volume("data", "32M")
    await new_vm(rig.store, "a", VolumeMount("data", "/srv"))
    await new_vm(rig.store, "b", VolumeMount("data", "/srv", True))
    disks, mounts = await rig.volumes.attach("a")
    assert [(d.serial, d.read_only, d.path) for d in disks] == [
        ("data", False, rig.files.path("data"))
    ]
    assert [(m.serial, m.path) for m in mounts] == [("data", "/srv")]
    assert (await rig.volumes.get_volume("data")).formatted  # first use
    # a claimed it and is still creating: b loses, even before a's status says starting.
    with pytest.raises(Conflict, match="in use by VM 'a'"):
        await rig.volumes.attach("b")
    with pytest.raises(InvalidState, match="in use by VM 'a'"):
        await rig.volumes.resize_volume("data", "64M")
    await rig.store.update_vm("a", status=VMStatus.RUNNING)
    assert (await rig.volumes.get_volume("data")).in_use_by == "a"
    with pytest.raises(Conflict):
        await rig.volumes.attach("b")
    await rig.store.update_vm("a", status=VMStatus.STOPPED)
    disks, _mounts = await rig.volumes.attach("b")
    assert [d.read_only for d in disks] == [True]
    # a claim whose VM ended after it claimed is gone; one whose VM failed too.
    await rig.store.update_vm("b", status=VMStatus.ERROR)
    await rig.volumes.attach("a")
    await rig.store.delete_vm("a")
    assert (await rig.volumes.get_volume("data")).in_use_by is None


async def test_two_concurrent_starts_cannot_both_win(rig: Rig) -> None:
    await rig.volumes.create_volume("data", "32M")
    for name in ("a", "b", "c"):
        await new_vm(rig.store, name, VolumeMount("data", "/srv"))
        await rig.store.update_vm(name, status=VMStatus.STOPPED)
    results = await asyncio.gather(
        *(rig.volumes.attach(name) for name in ("a", "b", "c")), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))


async def test_a_missing_file_is_reported_and_refused_at_start(rig: Rig) -> None:
    await rig.volumes.create_volume("data", "32M")
    await new_vm(rig.store, "a", VolumeMount("data", "/srv"))
    rig.files.path("data").unlink()
    assert (await rig.volumes.get_volume("data")).missing
    with pytest.raises(InvalidState, match="missing"):
        await rig.volumes.attach("a")
    assert await rig.volumes.wanted_files() == {str(rig.files.path("data")): ""}


# -- volar's tables --------------------------------------------------------------------------

VOLUME = {
    "name": "pg",
    "size_bytes": G,
    "allocated_bytes": 664 * 1024,
    "formatted": True,
    "missing": False,
    "in_use_by": "db",
    "attachments": [{"vm": "db", "path": "/srv", "read_only": True, "vm_status": "running"}],
}


def test_volume_table_and_details(capsys: pytest.CaptureFixture[str]) -> None:
    volume_table([VOLUME, {**VOLUME, "name": "new", "allocated_bytes": 0, "formatted": False,
                           "in_use_by": None, "attachments": []}])  # fmt: skip
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        ["NAME", "SIZE", "USED", "FORMATTED", "IN", "USE", "BY", "VMS"],
        ["pg", "1.0G", "664K", "yes", "db", "db"],
        ["new", "1.0G", "0", "no", "-", "-"],
    ]
    volume_details(VOLUME)
    out = capsys.readouterr().out
    assert "in_use_by:       db" in out
    assert out.endswith("attachments:\n  db: /srv (ro, VM running)\n")
