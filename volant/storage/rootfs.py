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
from volant.storage.errors import ToolFailed
from volant.storage.image import PulledImage, Rootfs
from volant.storage.layers import DigestMismatch, TreeCheck, check_layer
from volant.storage.tools import raise_if_no_space, run

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def fs_uuid(digest: str) -> str:
    """The erofs UUID of the image with this manifest digest: fixed, and distinct per image."""
    return str(uuid.UUID(bytes=bytes.fromhex(digest.removeprefix("sha256:"))[:16], version=4))


async def build_erofs(image: PulledImage, cache: ImageCache, out: Path, work_dir: Path) -> Rootfs:
    """Unpack image from cache under work_dir and write its erofs file system to out.

    out appears complete or not at all (written beside it, then renamed); the unpacked tree is
    removed whatever happens, cancellation included. Needs root, as umoci keeps ownership.
    """
    if os.geteuid() != 0:
        raise Unavailable(
            "building a root file system needs root: umoci keeps the image's file ownership",
            hint="run the build as root (volantd runs it in its own unit)",
        )
    await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=work_dir, prefix=".unpack-"))
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
    try:
        async with cache.locked(exclusive=False):
            await _check_layers(image, cache)
            await _unpack(image, cache, staging / "rootfs")
        await _mkfs(image, staging / "rootfs", partial)
        sha256, size = await asyncio.to_thread(_seal, partial, out)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
        raise
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True))
    log.info("built %s from %s (%s, %d bytes)", out, image.ref, image.digest, size)
    return Rootfs(path=str(out), sha256=sha256, size=size, uuid=fs_uuid(image.digest))


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


def _seal(partial: Path, out: Path) -> tuple[str, int]:
    """Hash and fsync the finished image, then rename it into place."""
    hasher = hashlib.sha256()
    with partial.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
        os.fsync(f.fileno())
    size = partial.stat().st_size
    os.replace(partial, out)
    return "sha256:" + hasher.hexdigest(), size
