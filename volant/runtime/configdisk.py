"""The read-only config disk that carries a plugin manifest too long for the kernel command line.

The guest agent (agent/README.md, "Config disk format") reads a raw block device, no filesystem,
laid out as:

    offset  size  content
    0       8     magic b"VOLMANI1"
    8       4     N, length of the document, unsigned big-endian (at most 1 MiB)
    12      32    sha256 of the document
    44      N     the manifest as UTF-8 JSON (one object)
    44+N    ...   zero padding up to a multiple of 512 bytes (a whole sector)

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

from volant.model import InvalidArgument

MAGIC = b"VOLMANI1"
HEADER = struct.Struct(">8sI32s")
# The agent refuses anything larger (it bounds what a bad disk can make it read).
MAX_DOCUMENT = 1 << 20
SECTOR = 512
MODE = 0o640


def config_disk_image(manifest: Mapping[str, Any]) -> bytes:
    """The config-disk image holding manifest, a whole number of 512-byte sectors.

    The document is the same compact, sorted-key JSON that `volant.manifest=` carries, so equal
    manifests give equal images. Raises InvalidArgument when it is larger than 1 MiB.
    """
    document = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    if len(document) > MAX_DOCUMENT:
        raise InvalidArgument(
            f"the manifest is {len(document)} bytes of JSON; a config disk holds at most "
            f"{MAX_DOCUMENT}",
            field="manifest",
        )
    image = HEADER.pack(MAGIC, len(document), hashlib.sha256(document).digest()) + document
    return image + b"\0" * (-len(image) % SECTOR)


def write_config_disk(path: Path, manifest: Mapping[str, Any]) -> Path:
    """Write manifest's config disk to path (mode 0640) and return path.

    Written to a temporary file beside path and renamed over it, so a hypervisor never opens a
    half-written disk. Blocking: call it off the event loop.
    """
    image = config_disk_image(manifest)
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
