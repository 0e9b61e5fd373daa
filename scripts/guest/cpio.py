"""Reproducible initramfs archives: a tree of entries written as gzip'd newc cpio."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class Tree:
    """Initramfs contents; parent directories are implied."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self.entries.setdefault(parent, Entry(parent, S_IFDIR | 0o755))

    def dir(self, path: str, perm: int = 0o755) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFDIR | perm)

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFREG | perm, data)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFCHR | perm, rdev=(major, minor))


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """A newc archive with fixed inode numbers, owners and mtimes: equal trees, equal bytes."""
    out = io.BytesIO()

    def record(ino: int, entry: Entry) -> None:
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
        out.write(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(entry.data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        record(ino, entry)
    record(0, Entry("TRAILER!!!", 0))
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()
