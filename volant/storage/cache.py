"""The image cache: one OCI layout whose blobs every pull shares.

Blobs are named by their digest, so an image whose layers are already here costs nothing to pull
again, and two images built on one base share its layers. Each pulled image is tagged in the
layout by the hex of the manifest digest its source knows it by (a registry's digest survives
skopeo's conversion to an OCI manifest only this way). Writers (skopeo copy) take the cache's
lock exclusively, readers (umoci unpack, layer checks) shared, because skopeo rewrites the
layout's index.json in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volant.storage.errors import ImageCorrupt, UnsupportedImage
from volant.storage.image import Descriptor

REF_ANNOTATION = "org.opencontainers.image.ref.name"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LOCK_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class CachedImage:
    """An image as the cache holds it: its OCI manifest's digest, its config and its layers."""

    tag: str
    manifest_digest: str
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]


def tag_for(digest: str) -> str:
    """The layout tag of the image with source manifest digest "sha256:<hex>"."""
    return digest.removeprefix("sha256:")


class ImageCache:
    """The shared OCI layout under `root` (root/oci), with its lock file beside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = root / "oci"
        self._lock_path = root / "lock"

    def reference(self, tag: str) -> str:
        """The cache's image `tag` as skopeo and umoci name it."""
        return f"oci:{self.layout}:{tag}"

    @contextlib.asynccontextmanager
    async def locked(self, *, exclusive: bool) -> AsyncIterator[None]:
        """Hold the cache's lock; polled, so a cancelled waiter leaves no thread blocked."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.layout / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def remove_blob(self, digest: str) -> None:
        """Drop a blob that failed verification, so the next pull fetches it again."""
        self.blob_path(digest).unlink(missing_ok=True)

    def _index_digest(self, tag: str) -> str | None:
        try:
            index = json.loads((self.layout / "index.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        for entry in index.get("manifests") or []:
            if (entry.get("annotations") or {}).get(REF_ANNOTATION) == tag:
                return str(entry["digest"])
        return None

    def read_json_blob(self, digest: str) -> dict[str, Any]:
        """A small blob (manifest, config), checked against its digest before it is trusted."""
        path = self.blob_path(digest)
        data = path.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self.remove_blob(digest)
            raise ImageCorrupt(f"cached blob {digest} does not match its digest; it was removed")
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ImageCorrupt(f"blob {digest} is not a JSON object")
        return document

    def remove_partial_blobs(self) -> int:
        """Delete what a killed skopeo left: its blobs are written to oci-put-blob* temporary
        files in the layout and renamed into blobs/ only once their digest matched. Call with
        the lock held exclusively (no skopeo is writing then). Returns how many were removed."""
        stale = list(self.layout.glob("oci-put-blob*")) if self.layout.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def image(self, tag: str) -> CachedImage | None:
        """The image tagged `tag`, or None unless its manifest, config and layers are all here."""
        digest = self._index_digest(tag)
        if digest is None or not self.has_blob(digest):
            return None
        manifest = self.read_json_blob(digest)
        if manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
            raise UnsupportedImage(f"cached manifest {digest} is a {manifest.get('mediaType')}")
        config_digest = str(manifest["config"]["digest"])
        layers = tuple(
            Descriptor(str(d["mediaType"]), str(d["digest"]), int(d["size"]))
            for d in manifest.get("layers") or []
        )
        if not self.has_blob(config_digest) or not all(self.has_blob(d.digest) for d in layers):
            return None
        config = self.read_json_blob(config_digest)
        return CachedImage(tag, digest, config, layers)
