"""VM disks on the host: sparse ext4 files made with mkfs.ext4, their usage, and rootfs checks.

A VM's writable disk is a sparse file: it takes on the host only the blocks the guest writes
(plus about 4 MiB of ext4 metadata). mkfs.ext4 runs on a hidden `.NAME.partial` file beside it,
renamed into place once formatted, so a daemon killed half-way never leaves a disk that looks
finished; the start-up repair removes the partial file.

mkfs.ext4 punches the file's blocks (discard) first, and since a punched file reads as zeros it
marks the inode tables zeroed: neither it nor the guest kernel writes them. Measured here with
e2fsprogs 1.47: a 10 GiB disk takes 4.3 MB after mkfs.ext4 (69 MB without the lazy-init
options, which zero the journal).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from volant.model import InsufficientStorage, Unavailable, disk_full_as_error
from volant.storage.fscheck import check_rootfs
from volant.storage.tools import run

PARTIAL = ".partial"
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1")


@dataclass(frozen=True)
class DiskSpace:
    """A disk file's size as the guest sees it and what it takes on the host."""

    size_bytes: int  # apparent size
    allocated_bytes: int  # st_blocks * 512: the blocks written


class DiskFiles:
    """Makes, measures, lists and removes VM disk files (the engine's `Disks` port)."""

    async def make(self, path: Path, size_bytes: int, label: str) -> None:
        """A sparse ext4 file system of size_bytes at path (replaced when it exists).

        Raises InsufficientStorage when the directory's file system is full, Unavailable when
        mkfs.ext4 is missing or fails.
        """
        partial = path.with_name(f".{path.name}{PARTIAL}")
        with disk_full_as_error(path.parent, f"cannot make the disk {path}"):
            await asyncio.to_thread(_sparse_file, partial, size_bytes)
        try:
            done = await run([*MKFS, "-L", label[:16], str(partial)])
            if not done.ok:
                if "no space" in done.stderr.lower():
                    raise InsufficientStorage.at(
                        path.parent, f"cannot format the disk {path}", done.message
                    )
                raise Unavailable(
                    f"mkfs.ext4 failed on {partial}: {done.message}", hint="apt install e2fsprogs"
                )
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
            raise

    async def remove(self, path: Path) -> None:
        """Remove the disk file (and a partial one beside it); nothing when it is gone."""
        partial = path.with_name(f".{path.name}{PARTIAL}")
        await asyncio.to_thread(_unlink_all, path, partial)

    async def space(self, path: Path) -> DiskSpace | None:
        """Size and allocation of the disk file; None when there is none."""
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            return None
        return DiskSpace(size_bytes=st.st_size, allocated_bytes=st.st_blocks * 512)

    async def scan(self, root: Path) -> dict[str, str]:
        """Disk files under root, finished or partial: path -> the VM name in it."""
        return await asyncio.to_thread(_scan, root)

    async def check_rootfs(self, path: Path, fmt: str) -> None:
        """InvalidArgument (field rootfs) unless path holds a whole fmt file system."""
        await asyncio.to_thread(check_rootfs, path, fmt)


def _sparse_file(path: Path, size_bytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Only volantd (and the hypervisor it starts) read a VM's writes.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)


def _unlink_all(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _scan(root: Path) -> dict[str, str]:
    if not root.is_dir():
        return {}
    found: dict[str, str] = {}
    for path in root.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(PARTIAL):
            name = name[1 : -len(PARTIAL)]
        if name.endswith(".img") and path.is_file():
            found[str(path)] = name.removesuffix(".img")
    return found
