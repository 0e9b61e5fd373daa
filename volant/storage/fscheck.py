"""A host-side sanity check of a rootfs image: its superblock says the format it claims, and the
file is at least as long as the file system says it is.

The artifact cache verifies a rootfs against the manifest's sha256, but a manifest may carry the
checksum of a file that was already truncated or is not the format it claims. Mounting such a
file fails only inside the guest, long after `create` answered; this check refuses it at create
and at start, naming the field. It reads two superblocks' worth of bytes, not the file system:
corruption inside a well-formed image is still found only by the guest's mount, which the agent
reports.
"""

from __future__ import annotations

import struct
from pathlib import Path

from volant.model import InvalidArgument

EROFS_MAGIC = 0xE0F5E1E2
SQUASHFS_MAGIC = 0x73717368  # "hsqs"
EXT4_MAGIC = 0xEF53
EXT4_INCOMPAT_64BIT = 0x80


def expected_size(header: bytes, fmt: str) -> int:
    """The bytes the file system in header (the image's first 2 KiB) spans; ValueError when the
    header is not a superblock of fmt."""
    if len(header) < 2048:
        raise ValueError("shorter than a superblock")
    if fmt == "erofs":
        magic, blkszbits = struct.unpack_from("<I8xB", header, 1024)
        (blocks,) = struct.unpack_from("<I", header, 1024 + 36)
        if magic != EROFS_MAGIC or not 9 <= blkszbits <= 16:
            raise ValueError("no erofs superblock")
        return int(blocks) << int(blkszbits)
    if fmt == "squashfs":
        magic, bytes_used = struct.unpack_from("<I36xQ", header, 0)
        if magic != SQUASHFS_MAGIC:
            raise ValueError("no squashfs superblock")
        return int(bytes_used)
    if fmt == "ext4":
        blocks_lo, log_block = struct.unpack_from("<4xI16xI", header, 1024)
        (magic,) = struct.unpack_from("<H", header, 1024 + 56)
        (incompat,) = struct.unpack_from("<I", header, 1024 + 0x60)
        (blocks_hi,) = struct.unpack_from("<I", header, 1024 + 0x150)
        if magic != EXT4_MAGIC or log_block > 6:
            raise ValueError("no ext4 superblock")
        blocks = blocks_lo | ((blocks_hi << 32) if incompat & EXT4_INCOMPAT_64BIT else 0)
        return int(blocks) * (1024 << int(log_block))
    raise ValueError(f"unknown format {fmt}")


def check_rootfs(path: Path, fmt: str) -> None:
    """Raise InvalidArgument (field rootfs) unless path holds a whole fmt file system.

    Blocking (reads 2 KiB and stats the file): call it off the event loop.
    """
    with path.open("rb") as fh:
        header = fh.read(2048)
        size = fh.seek(0, 2)
    try:
        needed = expected_size(header, fmt)
    except ValueError as exc:
        raise InvalidArgument(
            f"the rootfs {path.name} is not a {fmt} image ({exc})",
            hint="check rootfs.format in the manifest, or rebuild the image",
            field="rootfs",
        ) from exc
    if size < needed:
        raise InvalidArgument(
            f"the rootfs {path.name} is truncated: its {fmt} file system spans {needed} bytes, "
            f"the file has {size}",
            hint="rebuild or download the image again, with its new checksum",
            field="rootfs",
        )
