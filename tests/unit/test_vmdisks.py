"""VM disks on real files and a real SQLite store: sparse ext4 made by mkfs.ext4, what the
ledger records, what a VM's disk takes, and the rootfs superblock check on real images."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from volant.engine.ledger import Ledger
from volant.engine.vmdisks import VMDisks
from volant.model import (
    ROOTFS_SERIAL,
    UPPER_SERIAL,
    Disk,
    GuestRoot,
    InvalidArgument,
    ResourceKind,
    ResourceState,
    RootfsArtifact,
    RootfsFormat,
    Unavailable,
    Usage,
)
from volant.storage import DiskFiles
from volant.storage.fscheck import check_rootfs
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

MIB = 1 << 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        yield store
    finally:
        await store.close()


def disks(store: SqliteStore, root: Path) -> VMDisks:
    return VMDisks(Ledger(store), DiskFiles(), root, size_mb=1024)


async def test_a_disk_is_sparse_ext4_recorded_kept_and_removed(
    store: SqliteStore, tmp_path: Path
) -> None:
    vmdisks = disks(store, tmp_path / "disks")
    own = Disk(vmdisks.path("web"), UPPER_SERIAL, read_only=False)
    await vmdisks.ensure("web", (Disk(tmp_path / "rootfs", ROOTFS_SERIAL), own))
    path = tmp_path / "disks" / "web.img"
    assert path.stat().st_size == 1024 * MIB
    assert path.stat().st_blocks * 512 < 8 * MIB  # metadata only: no zeroed tables, no journal
    assert path.stat().st_mode & 0o777 == 0o600
    probe = subprocess.run(
        ["dumpe2fs", "-h", str(path)], capture_output=True, text=True, check=True
    )
    assert "Filesystem volume name:   web" in probe.stdout
    (record,) = await store.list_resources("web")
    assert (record.kind, record.name, record.state) == (
        ResourceKind.DISK, str(path), ResourceState.PRESENT
    )  # fmt: skip
    usage = await vmdisks.usage("web", Usage(cpu_seconds=1.5))
    assert usage.cpu_seconds == 1.5
    assert usage.disk_size_bytes == 1024 * MIB
    assert usage.disk_bytes == path.stat().st_blocks * 512

    # A second launch keeps the VM's writes: the file is not made again.
    path.write_bytes(b"written by the guest")
    await vmdisks.ensure("web", (own,))
    assert path.read_bytes() == b"written by the guest"

    assert await vmdisks.scan() == {str(path): "web"}
    await vmdisks.remove("web")
    assert not path.exists()
    assert await store.list_resources() == []
    assert (await vmdisks.usage("web", Usage())).disk_bytes is None


async def test_a_partial_disk_is_found_and_a_failed_make_leaves_nothing(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "disks"
    root.mkdir()
    (root / ".web.img.partial").write_bytes(b"")
    assert await DiskFiles().scan(root) == {str(root / ".web.img.partial"): "web"}

    vmdisks = disks(store, root)
    monkeypatch.setattr("volant.storage.disks.MKFS", ("false",))
    with pytest.raises(Unavailable, match=r"mkfs\.ext4 failed"):
        await vmdisks.ensure("web", (Disk(vmdisks.path("web"), UPPER_SERIAL, False),))
    assert list(root.iterdir()) == []
    assert await store.list_resources() == []


def _manifest_rootfs(fmt: str, ephemeral: bool = False) -> Any:
    class M:
        rootfs = RootfsArtifact(path="x", format=RootfsFormat(fmt), ephemeral=ephemeral)

    return M()


async def test_layout_of_a_vm(store: SqliteStore, tmp_path: Path) -> None:
    vmdisks = disks(store, tmp_path / "disks")

    class VM:
        name = "web"
        ephemeral = False

    rootfs = tmp_path / "cached.erofs"
    attached, root = vmdisks.layout(VM(), _manifest_rootfs("squashfs"), rootfs)  # type: ignore[arg-type]
    assert attached == (
        Disk(rootfs, ROOTFS_SERIAL, read_only=True),
        Disk(tmp_path / "disks" / "web.img", UPPER_SERIAL, read_only=False),
    )
    assert root == GuestRoot("squashfs", upper=UPPER_SERIAL)
    attached, root = vmdisks.layout(VM(), _manifest_rootfs("erofs", True), rootfs)  # type: ignore[arg-type]
    assert (attached, root) == ((Disk(rootfs, ROOTFS_SERIAL),), GuestRoot("erofs"))


@pytest.mark.parametrize("fmt", ["erofs", "ext4", "squashfs"])
def test_the_superblock_check_on_real_images(tmp_path: Path, fmt: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_bytes(bytes(range(256)) * 4096)
    image = tmp_path / f"image.{fmt}"
    if fmt == "erofs":
        argv = ["mkfs.erofs", "--quiet", str(image), str(tree)]
    elif fmt == "ext4":
        subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
        argv = ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)]
    else:
        if shutil.which("mksquashfs") is None:
            pytest.skip("squashfs-tools is not installed")
        argv = ["mksquashfs", str(tree), str(image), "-quiet", "-noappend"]
    subprocess.run(argv, check=True, capture_output=True)
    check_rootfs(image, fmt)
    other = "ext4" if fmt != "ext4" else "erofs"
    with pytest.raises(InvalidArgument, match=f"not a {other} image"):
        check_rootfs(image, other)
    with image.open("r+b") as fh:
        fh.truncate(image.stat().st_size - 4096)
    with pytest.raises(InvalidArgument, match="truncated") as caught:
        check_rootfs(image, fmt)
    assert caught.value.field == "rootfs"
