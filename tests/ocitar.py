"""Layer tars made by hand for tests: exact names, owners, links and whiteouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass

MTIME = 1_700_000_000  # fixed, so the same entries give the same blob and digest


@dataclass(frozen=True)
class Entry:
    """One tar member: a file (data), a directory, a symlink or a hard link (link)."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def file(name: str, data: bytes = b"", mode: int = 0o644, owner: int = 0) -> Entry:
    return Entry(name, data, tarfile.REGTYPE, mode=mode, uid=owner, gid=owner)


def directory(name: str, mode: int = 0o755, owner: int = 0) -> Entry:
    return Entry(name, kind=tarfile.DIRTYPE, mode=mode, uid=owner, gid=owner)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, kind=tarfile.LNKTYPE, link=target)


def tar_bytes(entries: list[Entry]) -> bytes:
    """An uncompressed tar of entries, in the order given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.linkname = entry.link
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.mtime = MTIME
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return out.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
