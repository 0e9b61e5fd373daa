"""Volume files: sparse raw images under one directory, formatted ext4 and grown in place.

A file is made with truncate (no block is written until the guest writes one), formatted with
mkfs.ext4 on its first attach (lazy inode-table and journal init keep it sparse) and grown by
extending the file, then e2fsck -f and resize2fs offline: the guest never has it mounted then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from volant.model import (
    InsufficientStorage,
    InternalError,
    InvalidArgument,
    NotFound,
    disk_full_as_error,
)
from volant.storage.tools import Finished, run

SUFFIX = ".img"
# e2fsck's exit status: 0 clean, 1 errors fixed; anything above is a file system it left alone.
E2FSCK_OK = (0, 1)


class VolumeDir:
    """The volumes directory (<state_dir>/volumes): one `<name>.img` per volume."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / f"{name}{SUFFIX}"

    async def create(self, name: str, size: int) -> None:
        """A new sparse file of size bytes; FileExistsError when one is there already."""
        path = self.path(name)
        with _too_large(size), disk_full_as_error(self.root, f"cannot make volume {name}"):
            await asyncio.to_thread(_create, path, size)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self.path(name).unlink, missing_ok=True)

    async def grow(self, name: str, size: int) -> None:
        """Extend the file to size bytes (sparse: nothing is written)."""
        path = self.path(name)
        with _too_large(size), disk_full_as_error(self.root, f"cannot grow volume {name}"):
            await asyncio.to_thread(_grow, path, size)

    async def format(self, name: str) -> None:
        """mkfs.ext4 on the file, labelled with the volume's name where it fits (16 bytes)."""
        argv = ["mkfs.ext4", "-F", "-q", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1"]
        if len(name) <= 16:
            argv += ["-L", name]
        done = await run([*argv, str(self.path(name))])
        _check(done, name, "format")

    async def grow_fs(self, name: str) -> None:
        """Grow the ext4 file system to the file's size (offline: check it first, as
        resize2fs insists)."""
        path = str(self.path(name))
        checked = await run(["e2fsck", "-f", "-p", path])
        if checked.returncode not in E2FSCK_OK:
            _check(checked, name, "check")
        _check(await run(["resize2fs", path]), name, "grow the file system of")

    async def stat(self, name: str) -> tuple[int, int] | None:
        """(apparent size, bytes allocated on the host) of the file; None when it is missing."""
        try:
            st = await asyncio.to_thread(os.stat, self.path(name))
        except FileNotFoundError:
            return None
        return st.st_size, st.st_blocks * 512

    async def scan(self) -> dict[str, str]:
        """Every volume file (and half-made one) here: path -> volume name."""
        return await asyncio.to_thread(_scan, self.root)


@contextlib.contextmanager
def _too_large(size: int) -> Iterator[None]:
    """EFBIG: the host's file system holds no file that large."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        raise InvalidArgument(
            f"the file system of the state directory cannot hold a file of {size} bytes",
            hint="ask for a smaller volume",
            field="size",
        ) from exc


def _create(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _grow(path: Path, size: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"the file of the volume is missing: {path}") from exc
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
            os.fsync(fd)
    finally:
        os.close(fd)


def _scan(root: Path) -> dict[str, str]:
    if not root.is_dir():
        return {}
    return {str(p): p.name.removesuffix(SUFFIX) for p in root.iterdir() if p.is_file()}


def _check(done: Finished, name: str, what: str) -> None:
    if done.ok:
        return
    text = done.stderr.lower()
    if "no space left" in text or "file too large" in text:
        raise InsufficientStorage(
            f"cannot {what} volume {name}: {done.message}",
            hint="free space on the file system of the state directory, then try again",
        )
    raise InternalError(f"cannot {what} volume {name}: {done.message}")
