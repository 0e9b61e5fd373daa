"""Reproducible initramfs archives: a tree of entries written as (gzip'd) newc cpio.

The kernel unpacks several archives laid end to end, in order, skipping zero bytes between them
(init/initramfs.c); read_newc follows the same rule, so tests can list a concatenated image.
"""

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


def cpio_newc(entries: Iterable[Entry], block: int = 4) -> bytes:
    """A newc archive with fixed inode numbers, owners and mtimes: equal trees, equal bytes.

    Zero-padded to a multiple of block (4, newc's own alignment, or 512 like the cpio tool).
    """
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
    out.write(b"\0" * (-out.tell() % block))
    return out.getvalue()


NEWC_MAGIC = b"070701"
_HEADER = 110  # the magic and 13 fields of 8 hex digits


def read_newc(data: bytes) -> list[Entry]:
    """The entries of one or more concatenated, uncompressed newc archives, in archive order.

    Trailers are left out. Raises ValueError on a malformed archive, or on an entry whose owner
    or mtime is not 0 (every archive here is written with fixed ones).
    """
    entries: list[Entry] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1  # padding between concatenated archives
            continue
        if pos % 4 or data[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"no newc header at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        _ino, mode, uid, gid, _nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _ = fields
        name_at = pos + _HEADER
        name = data[name_at : name_at + namesize - 1].decode()
        body_at = name_at + namesize + (-(name_at + namesize) % 4)
        body = data[body_at : body_at + size]
        if len(body) != size:
            raise ValueError(f"{name}: the archive ends inside its data")
        if uid or gid or mtime:
            raise ValueError(f"{name}: owner or mtime is not 0")
        pos = body_at + size + (-(body_at + size) % 4)
        if name != "TRAILER!!!":
            entries.append(Entry(name, mode, body, (rmaj, rmin)))
    return entries


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()
