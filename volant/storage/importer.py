"""OCI image → erofs root file system + workload description, in one call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volant.storage.cache import ImageCache
from volant.storage.image import PulledImage, Rootfs
from volant.storage.pull import pull
from volant.storage.reference import ImageRef, parse_image_ref
from volant.storage.rootfs import build_erofs
from volant.storage.skopeo import Access


@dataclass(frozen=True)
class ImportedImage:
    """A pulled image and the root file system built from it."""

    image: PulledImage
    rootfs: Rootfs


async def import_image(
    ref: ImageRef | str,
    *,
    cache_dir: Path,
    out: Path,
    work_dir: Path,
    access: Access | None = None,
) -> ImportedImage:
    """Pull ref into the blob cache at cache_dir, then build its erofs image at out.

    work_dir holds the unpacked tree while the build runs (it is removed afterwards); it needs
    room for the whole unpacked image. The cache keeps the build too, so importing the same
    manifest digest again neither fetches nor builds. On any failure, cancellation included,
    out is not created and work_dir is left as it was; the cache keeps only blobs that matched
    their digest and builds that completed.
    """
    if isinstance(ref, str):
        ref = parse_image_ref(ref)
    cache = ImageCache(cache_dir)
    image = await pull(ref, cache, access)
    rootfs = await build_erofs(image, cache, out, work_dir)
    return ImportedImage(image=image, rootfs=rootfs)
