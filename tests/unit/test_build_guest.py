"""The guest builder's pure parts: the newc writer, .modinfo parsing and module ordering."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.build_guest import (
    BuildError,
    Tree,
    cpio_newc,
    gzip_bytes,
    modinfo,
    module_index,
    resolve_modules,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def sample_tree() -> Tree:
    tree = Tree()
    tree.file("bin/busybox", b"\x7fELF fake", 0o755)
    tree.symlink("bin/sh", "/bin/busybox")
    tree.chardev("dev/console", 5, 1)
    tree.file("init", b"#!/bin/sh\n", 0o755)
    return tree


def test_archive_is_reproducible_and_ordered() -> None:
    one = gzip_bytes(cpio_newc(sample_tree().entries.values()))
    two = gzip_bytes(cpio_newc(reversed(list(sample_tree().entries.values()))))
    assert one == two
    raw = gzip.decompress(one)
    assert raw.startswith(b"070701")
    assert raw.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(raw) % 4 == 0


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_busybox_cpio_reads_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio_newc(sample_tree().entries.values()))
    listing = subprocess.run(
        ["busybox", "cpio", "-tv", "-F", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines if "->" not in line] == [
        "bin",
        "bin/busybox",
        "dev",
        "dev/console",
        "init",
    ]
    assert any(line.startswith("crw-------") and "dev/console" in line for line in lines)
    assert any("bin/sh -> /bin/busybox" in line for line in lines)


def _kernel_modules() -> Path:
    found = sorted((ROOT / ".cache" / "extract").glob("linux-image-*/lib/modules/*/kernel"))
    if not found:
        pytest.skip("no extracted kernel package (run scripts/build_guest.py)")
    return found[-1]


def test_modinfo_and_dependency_order_on_the_real_kernel() -> None:
    index = module_index(_kernel_modules())
    assert "failover" in modinfo(index["net_failover"])["depends"].split(",")
    order = resolve_modules(index, ["virtio_net", "virtio_pci"])
    for before, after in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio_pci_modern_dev", "virtio_pci"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
    ]:
        assert order.index(before) < order.index(after)
    with pytest.raises(BuildError, match="not in the kernel"):
        resolve_modules(index, ["no_such_module"])


def test_modinfo_refuses_non_elf(tmp_path: Path) -> None:
    bogus = tmp_path / "x.ko"
    bogus.write_bytes(b"not an elf file at all, not even close" * 4)
    with pytest.raises(BuildError):
        modinfo(bogus)
