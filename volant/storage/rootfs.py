"""Build a read-only erofs root file system from a pulled image, reproducibly.

umoci applies the layers as root, so whiteouts, ownership, modes and file capabilities come out
as the image means them; mkfs.erofs then packs the tree. The output depends on the image alone:
mkfs.erofs sorts directory entries itself, SOURCE_DATE_EPOCH (the image's creation time) clamps
every newer timestamp (directories umoci creates or whiteouts touch get the unpack time
otherwise), and the file system UUID comes from the manifest digest. So two builds of one image
are byte-identical, and the rootfs's checksum names the image.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from volant.model import Unavailable
from volant.storage.cache import ImageCache, tag_for
from volant.storage.errors import NoSpace, ToolFailed
from volant.storage.image import PulledImage, Rootfs
from volant.storage.layers import DigestMismatch, TreeCheck, check_layer
from volant.storage.tools import raise_if_no_space, run

log = logging.getLogger(__name__)
# Part of a cached build's name: bump it when a change here makes builds differ, so older
# builds in caches are not reused.
BUILD_FORMAT = 1


def fs_uuid(digest: str) -> str:
    """The erofs UUID of the image with this manifest digest: fixed, and distinct per image."""
    return str(uuid.UUID(bytes=bytes.fromhex(digest.removeprefix("sha256:"))[:16], version=4))


def cached_rootfs(cache: ImageCache, digest: str) -> Path:
    """Where the cache keeps the erofs image of the image with manifest digest `digest`."""
    return cache.root / "rootfs" / f"{tag_for(digest)}.v{BUILD_FORMAT}.erofs"


async def build_erofs(image: PulledImage, cache: ImageCache, out: Path, work_dir: Path) -> Rootfs:
    """Write the erofs file system of image to out, building it under work_dir if need be.

    A build is kept in the cache beside the blobs, with its checksum, and a later call for the
    same manifest digest reuses it after checking that checksum (a damaged one is rebuilt). out
    is a hard link to the cached file where both share a file system, a copy otherwise, and
    appears complete or not at all. The unpacked tree is removed whatever happens, cancellation
    included. Building needs root, as umoci keeps ownership.
    """
    cached = cached_rootfs(cache, image.digest)
    found = await asyncio.to_thread(_verified, cached)
    reused = found is not None
    if found is None:
        found = await _build(image, cache, cached, work_dir)
    await _place(cached, out)
    sha256, size = found
    log.info("%s %s from %s (%s)", "reused" if reused else "built", out, image.ref, image.digest)
    return Rootfs(
        path=str(out), sha256=sha256, size=size, uuid=fs_uuid(image.digest), reused=reused
    )


async def _build(
    image: PulledImage, cache: ImageCache, dest: Path, work_dir: Path
) -> tuple[str, int]:
    if os.geteuid() != 0:
        raise Unavailable(
            "building a root file system needs root: umoci keeps the image's file ownership",
            hint="run the build as root (volantd runs it in its own unit)",
        )
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=work_dir, prefix=".unpack-"))
    partial = _partial(dest)
    try:
        async with cache.locked(exclusive=False):
            await _check_layers(image, cache)
            await _unpack(image, cache, staging / "rootfs")
        await _mkfs(image, staging / "rootfs", partial)
        return await asyncio.to_thread(_seal, partial, dest)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
        raise
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True))


async def _place(cached: Path, out: Path) -> None:
    partial = _partial(out)
    try:
        await asyncio.to_thread(_link_or_copy, cached, partial, out)
    except BaseException as exc:
        await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(
                f"writing {out}: no space left on the device",
                hint="free some space in the output directory, then build again",
            ) from exc
        raise


async def _check_layers(image: PulledImage, cache: ImageCache) -> None:
    tree = TreeCheck()
    for number, layer in enumerate(image.layers, start=1):
        try:
            await asyncio.to_thread(check_layer, cache.blob_path(layer.digest), layer, tree, number)
        except DigestMismatch:
            await asyncio.to_thread(cache.remove_blob, layer.digest)
            raise


async def _unpack(image: PulledImage, cache: ImageCache, rootfs: Path) -> None:
    # `raw unpack` applies the layers exactly as `umoci unpack` does, without the runtime
    # bundle around them (config.json, and an mtree manifest that hashes every file again).
    tag = tag_for(image.digest)
    done = await run(["umoci", "raw", "unpack", "--image", f"{cache.layout}:{tag}", str(rootfs)])
    if not done.ok:
        raise_if_no_space(done, f"unpacking {image.ref}")
        raise ToolFailed(f"unpacking {image.ref}: umoci failed: {done.message}")


async def _mkfs(image: PulledImage, rootfs: Path, dest: Path) -> None:
    # A creation time in the future would clamp nothing and leave the unpack time in the image.
    epoch = min(image.created, int(time.time()))
    argv = ["mkfs.erofs", "--quiet", f"-U{fs_uuid(image.digest)}", str(dest), str(rootfs)]
    done = await run(argv, env={"SOURCE_DATE_EPOCH": str(epoch)})
    if not done.ok:
        raise_if_no_space(done, f"writing the erofs image of {image.ref}")
        raise ToolFailed(f"writing the erofs image of {image.ref}: {done.message}")


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")


def _sum_path(rootfs: Path) -> Path:
    return rootfs.with_name(rootfs.name + ".sha256")


def _hash(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _verified(rootfs: Path) -> tuple[str, int] | None:
    """(checksum, size) of a cached build whose content still matches its recorded checksum;
    None when there is none. A damaged one is deleted, so it is built again."""
    try:
        recorded = _sum_path(rootfs).read_text().strip()
    except FileNotFoundError:
        return None  # no build, or one interrupted before its checksum was written
    if rootfs.is_file() and _hash(rootfs) == recorded:
        return recorded, rootfs.stat().st_size
    log.warning("cached rootfs %s does not match its checksum; building it again", rootfs)
    rootfs.unlink(missing_ok=True)
    _sum_path(rootfs).unlink(missing_ok=True)
    return None


def _seal(partial: Path, dest: Path) -> tuple[str, int]:
    """fsync the finished image, rename it into place, then record its checksum beside it:
    a build without its checksum file is treated as absent."""
    with partial.open("rb") as f:
        os.fsync(f.fileno())
    sha256, size = _hash(partial), partial.stat().st_size
    os.replace(partial, dest)
    record = _partial(_sum_path(dest))
    record.write_text(sha256 + "\n")
    os.replace(record, _sum_path(dest))
    return sha256, size


def _link_or_copy(source: Path, partial: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, partial)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, partial)
        with partial.open("rb") as f:
            os.fsync(f.fileno())
    os.replace(partial, dest)
