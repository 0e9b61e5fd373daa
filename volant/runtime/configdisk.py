"""The read-only config disk every VM gets: its agent secret, and its plugin manifest (which the
agent reads from here when it is too long for the kernel command line).

The secret travels only here, never on the command line: QEMU's argv (-append) is readable by
every local user through /proc. The image file is mode 0600 in the VM's run directory.

The guest agent (agent/README.md, "Config disk format") reads a raw block device, no filesystem,
laid out as:

    offset  size  content
    0       8     magic b"VOLCONF1"
    8       4     N, length of the document, unsigned big-endian (at most 1 MiB)
    12      32    sha256 of the document
    44      N     UTF-8 JSON: {"agent_secret": "...", "manifest": {...} or null,
                              "storage": {...}}   (storage only when the VM has disks to mount)
    44+N    ...   zero padding up to a multiple of 512 bytes (a whole sector)

storage says how the agent assembles the workload's root (agent/README.md has the keys):
{"rootfs": {"serial", "format"}, "upper": {"serial"} or {"tmpfs": true},
"mounts": [{"serial", "path", "read_only"}]}. Without a rootfs and mounts the key is absent, so
an initramfs plugin's disk keeps the bytes it had before storage existed.

The host keeps its own encoder because `volant` never imports the guest's `volant_agent`; a unit
test pins the two to the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from volant.model import InvalidArgument, LaunchSpec

MAGIC = b"VOLCONF1"
HEADER = struct.Struct(">8sI32s")
# The agent refuses anything larger (it bounds what a bad disk can make it read).
MAX_DOCUMENT = 1 << 20
SECTOR = 512
# Only the hypervisor, which runs as volantd's user, reads it: the secret is in it.
MODE = 0o600


def storage_document(spec: LaunchSpec) -> dict[str, Any] | None:
    """The config disk's storage key for spec: its guest root and mounts; None for neither."""
    doc: dict[str, Any] = {}
    if spec.root is not None:
        root = spec.root
        doc["rootfs"] = {"serial": root.rootfs, "format": root.format}
        doc["upper"] = {"serial": root.upper} if root.upper else {"tmpfs": True}
    if spec.mounts:
        doc["mounts"] = [
            {"serial": m.serial, "path": m.path, "read_only": m.read_only} for m in spec.mounts
        ]
    return doc or None


def config_disk_image(
    manifest: Mapping[str, Any] | None,
    secret: str,
    storage: Mapping[str, Any] | None = None,
) -> bytes:
    """The config-disk image holding manifest, secret and storage (left out when None), a
    whole number of 512-byte sectors.

    The document is compact, sorted-key JSON, so equal inputs give equal images. Raises
    InvalidArgument when it is larger than 1 MiB.
    """
    doc: dict[str, Any] = {"agent_secret": secret, "manifest": manifest}
    if storage is not None:
        doc["storage"] = storage
    document = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if len(document) > MAX_DOCUMENT:
        raise InvalidArgument(
            f"the manifest is {len(document)} bytes of JSON; a config disk holds at most "
            f"{MAX_DOCUMENT}",
            field="manifest",
        )
    image = HEADER.pack(MAGIC, len(document), hashlib.sha256(document).digest()) + document
    return image + b"\0" * (-len(image) % SECTOR)


def write_config_disk(
    path: Path,
    manifest: Mapping[str, Any] | None,
    secret: str,
    storage: Mapping[str, Any] | None = None,
) -> Path:
    """Write the config disk with manifest, secret and storage to path (mode 0600) and return
    path.

    Written to a temporary file beside path and renamed over it, so a hypervisor never opens a
    half-written disk. Blocking: call it off the event loop.
    """
    image = config_disk_image(manifest, secret, storage)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), MODE)
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
