"""Pull: resolve a reference to a manifest digest, refuse other platforms, copy what is missing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

from volant.model import InvalidArgument
from volant.storage import skopeo
from volant.storage.cache import CachedImage, ImageCache, tag_for
from volant.storage.errors import ImageCorrupt, ImageNotFound, UnsupportedImage
from volant.storage.image import (
    PulledImage,
    check_platform,
    created_epoch,
    pick_platform,
    workload_from_config,
)
from volant.storage.reference import ImageRef, Transport
from volant.storage.skopeo import Access

log = logging.getLogger(__name__)

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


async def pull(ref: ImageRef, cache: ImageCache, access: Access | None = None) -> PulledImage:
    """Bring the image's blobs into the cache and describe it.

    A registry image pinned by a digest the cache already holds is not asked for at all; any
    other is resolved to its manifest digest first (one manifest request) and copied pinned to
    that digest, so a tag moving during the pull cannot mix two images.
    """
    access = access or Access()
    await _check_inputs(ref, access)
    if ref.digest:
        async with cache.locked(exclusive=False):
            cached = await asyncio.to_thread(cache.image, tag_for(ref.digest))
        if cached is not None:
            return _described(ref, ref.digest, cached, hit=True, fetched=0)
    digest = await _resolve(ref, access)
    pinned = ref.pinned(digest)
    async with cache.locked(exclusive=True):
        cached = await asyncio.to_thread(cache.image, tag_for(digest))
        if cached is not None:
            return _described(ref, digest, cached, hit=True, fetched=0)
        check_platform(await skopeo.inspect_config(pinned, access), ref)
        if removed := await asyncio.to_thread(cache.remove_partial_blobs):
            log.info("removed %d partial blobs of an interrupted pull from %s", removed, cache.root)
        before = await asyncio.to_thread(_blobs_present, cache)
        log.info("pulling %s (%s) into %s", ref, digest, cache.layout)
        await skopeo.copy(pinned, cache.reference(tag_for(digest)), access)
        cached = await asyncio.to_thread(cache.image, tag_for(digest))
    if cached is None:
        raise ImageCorrupt(f"{ref}: skopeo finished, but the cache lacks some of its blobs")
    fetched = sum(1 for layer in cached.layers if layer.digest not in before)
    return _described(ref, digest, cached, hit=False, fetched=fetched)


async def _check_inputs(ref: ImageRef, access: Access) -> None:
    # skopeo would report a missing auth file or CA directory as a missing image.
    for path, field in ((access.authfile, "authfile"), (access.cert_dir, "cert_dir")):
        if path is not None and not await asyncio.to_thread(path.exists):
            raise InvalidArgument(f"{field}: {path} does not exist", field=field)
    if ref.transport is not Transport.DOCKER and not await asyncio.to_thread(Path(ref.name).exists):
        raise ImageNotFound(f"{ref}: {ref.name} does not exist")


async def _resolve(ref: ImageRef, access: Access) -> str:
    """The digest of the linux/amd64 manifest that ref names."""
    raw = await skopeo.inspect_raw(ref, access)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ImageCorrupt(f"{ref}: the manifest is not JSON") from exc
    media_type = manifest.get("mediaType", "") if isinstance(manifest, dict) else ""
    if ref.digest and ref.digest != digest:
        raise ImageCorrupt(f"{ref}: the source served a manifest with digest {digest}")
    if media_type in INDEX_TYPES or (not media_type and "manifests" in manifest):
        return pick_platform(manifest, ref)
    if media_type and media_type not in MANIFEST_TYPES:
        raise UnsupportedImage(f"{ref}: manifest type {media_type} is not supported")
    return digest


def _blobs_present(cache: ImageCache) -> set[str]:
    """Digests of the blobs in the cache, to count which of an image's layers it shared."""
    blobs = cache.layout / "blobs" / "sha256"
    if not blobs.is_dir():
        return set()
    return {"sha256:" + p.name for p in blobs.iterdir()}


def _described(
    ref: ImageRef, digest: str, cached: CachedImage, *, hit: bool, fetched: int
) -> PulledImage:
    check_platform(cached.config, ref)
    return PulledImage(
        ref=ref,
        digest=digest,
        layers=cached.layers,
        workload=workload_from_config(cached.config),
        created=created_epoch(cached.config),
        cache_hit=hit,
        blobs_fetched=fetched,
        blobs_reused=len(cached.layers) - fetched,
    )
