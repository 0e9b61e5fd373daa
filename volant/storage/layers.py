"""Check every layer before it is unpacked: its digest, and that it stays inside the root.

umoci resolves each path inside the root it unpacks to (a `../x` entry lands at `/x`, a write
through a symbolic link to `/etc` lands in the image's own `/etc`), so nothing escapes the
staging directory even without this check. But a layer that tries is broken or hostile, and
no image builder makes one: its tar names are real paths. So such an image is refused with a
clear error instead of being quietly rewritten. Reading the layers here also verifies each
blob against its digest, the cache's guard against a blob damaged after it was fetched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, cast

from volant.storage.errors import ImageCorrupt, UnsafeImage, UnsupportedImage
from volant.storage.image import Descriptor

GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
TAR_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    }
)
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20


class DigestMismatch(ImageCorrupt):
    """A blob's content does not match the digest it is named by."""


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        self.hasher.update(data)
        buffer[: len(data)] = data
        return len(data)


def _parts(name: str, layer: int, what: str) -> tuple[str, ...]:
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeImage(
            f"layer {layer} {what} {name!r} climbs out of the image root with '..'",
            hint="the image is broken or hostile; rebuild it with a standard tool",
        )
    return parts


class TreeCheck:
    """Follows the symbolic links the layers make, in order, to refuse writes through them."""

    def __init__(self) -> None:
        self.symlinks: set[str] = set()

    def _through_link(self, parts: tuple[str, ...], layer: int, name: str) -> None:
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in self.symlinks:
                raise UnsafeImage(
                    f"layer {layer} entry {name!r} is written through the symbolic link "
                    f"{prefix!r}, which would lead outside the path the layer names",
                    hint="the image is broken or hostile; rebuild it with a standard tool",
                )

    def _forget_under(self, prefix: str, keep: set[str]) -> None:
        gone = {s for s in self.symlinks if s.startswith(prefix + "/") and s not in keep}
        self.symlinks -= gone

    def layer(self, members: Iterable[tarfile.TarInfo], layer: int) -> None:
        """Check one layer's entries, in tar order, against the tree the layers below made."""
        added: set[str] = set()
        for member in members:
            parts = _parts(member.name, layer, "entry")
            if not parts:
                continue
            self._through_link(parts, layer, member.name)
            path, base = "/".join(parts), parts[-1]
            if base == OPAQUE:
                self._forget_under("/".join(parts[:-1]), keep=added)
            elif base.startswith(WHITEOUT):
                hidden = "/".join((*parts[:-1], base[len(WHITEOUT) :]))
                self.symlinks.discard(hidden)
                self._forget_under(hidden, keep=added)
            elif member.islnk():
                link = _parts(member.linkname, layer, "hard link target")
                self._through_link(link, layer, member.linkname)
                self.symlinks.discard(path)
            elif member.issym():
                self.symlinks.add(path)
                added.add(path)
            else:
                self.symlinks.discard(path)


def _open(raw: IO[bytes], descriptor: Descriptor) -> IO[bytes]:
    if descriptor.media_type in GZIP_TYPES:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if descriptor.media_type in TAR_TYPES:
        return raw
    raise UnsupportedImage(
        f"layer {descriptor.digest} has media type {descriptor.media_type}; "
        "only tar and gzip-compressed tar layers are supported"
    )


def check_layer(path: Path, descriptor: Descriptor, tree: TreeCheck, layer: int) -> None:
    """Verify one layer blob's digest and walk its entries with tree. Blocking: run in a thread.

    A blob that does not match its digest is ImageCorrupt (the caller drops it from the cache);
    one that matches but is no readable tar is ImageCorrupt too, as the image itself is broken.
    """
    with path.open("rb") as blob:
        hashing = _Hashing(blob)
        reader = io.BufferedReader(hashing, CHUNK)
        unreadable: Exception | None = None
        try:
            with tarfile.open(fileobj=_open(reader, descriptor), mode="r|") as tar:
                tree.layer(tar, layer)
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            unreadable = exc
        while reader.read(CHUNK):
            pass
        digest = "sha256:" + hashing.hasher.hexdigest()
    if digest != descriptor.digest:
        raise DigestMismatch(
            f"layer {layer} ({descriptor.digest}) does not match its digest (got {digest})",
            hint="the damaged blob was dropped from the cache; pull the image again",
        )
    if unreadable is not None:
        raise ImageCorrupt(f"layer {layer} ({descriptor.digest}) is not a tar: {unreadable}")
