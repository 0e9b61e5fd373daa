"""Volumes: named disks that outlive VMs, and the rules for their names, sizes and mount paths.

A volume is attached to the guest as virtio-blk with its name as the disk's serial, and the
guest finds it by that serial. virtio-blk keeps at most 20 bytes of a serial, so a volume name
is a DNS label of at most 20 characters; Volant's own disks use serials that start with
`volant-`, so no volume name may.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from volant.model.errors import InvalidArgument

MAX_NAME = 20  # bytes of a virtio-blk serial
RESERVED_PREFIX = "volant-"
VOLUME_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?")
VOLUME_NAME_RULE = (
    "a DNS label of at most 20 characters (a-z, 0-9, '-'), not starting with 'volant-'"
)
# Anchored for JSON Schema; the reserved prefix is checked by validate_volume_name (pydantic's
# regex engine has no look-ahead to say it here).
VOLUME_NAME_PATTERN = f"^{VOLUME_NAME_RE.pattern}$"

MIB = 1024 * 1024
MIN_SIZE = 16 * MIB  # room for ext4's journal and a little data
# ext4 holds files of up to 16 TiB less a block: 8 TiB leaves room on any file system a state
# directory is likely to be on.
MAX_SIZE = 8 * 1024**4
_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"([0-9]+)\s*(?:([KMGT])(?:I?B)?|B)?", re.IGNORECASE)
# The same for JSON Schema documents (the limits are checked by parse_size).
SIZE_PATTERN = "^\\s*[0-9]+\\s*([KMGTkmgt]([Ii]?[Bb])?|[Bb])?\\s*$"
SIZE_RULE = "bytes, or a whole number with a K, M, G or T suffix (1G, 512M; powers of 1024)"

# Most volumes hold a workload's data: what must a path not shadow?
_FORBIDDEN_PATHS = frozenset({"/", "/proc", "/sys", "/dev", "/run", "/tmp", "/etc"})
MAX_PATH = 1024
# validate_mount_path as a JSON Schema pattern: absolute, printable ASCII without spaces or ':',
# no '.' or '..' segment, none of the directories above.
_SYSTEM = "|".join(p.strip("/") for p in sorted(_FORBIDDEN_PATHS) if p != "/")
MOUNT_PATH_PATTERN = f"^(?!/*({_SYSTEM})?/*$)(?!.*/\\.\\.?(/|$))/[\\x21-\\x39\\x3b-\\x7e]*$"


@dataclass(frozen=True)
class VolumeMount:
    """A volume as a VM asks for it at create: mounted at path, read-only or not."""

    name: str
    path: str
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "read_only": self.read_only}


@dataclass(frozen=True)
class VolumeAttachment:
    """A VM a volume is attached to, and where the guest mounts it."""

    vm: str
    path: str
    read_only: bool
    vm_status: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "path": self.path,
            "read_only": self.read_only,
            "vm_status": self.vm_status,
        }


@dataclass(frozen=True)
class Volume:
    """A volume as the store records it, with what the host says of its file.

    allocated_bytes is what the sparse file takes on the host's disk (None when it is missing);
    missing says the file is gone although the volume is recorded (see docs/volumes.md).
    """

    name: str
    size_bytes: int
    formatted: bool
    created_at: datetime
    updated_at: datetime
    attachments: tuple[VolumeAttachment, ...] = ()
    allocated_bytes: int | None = None
    missing: bool = False
    in_use_by: str | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_bytes": self.size_bytes,
            "allocated_bytes": self.allocated_bytes,
            "formatted": self.formatted,
            "missing": self.missing,
            "in_use_by": self.in_use_by,
            "attachments": [a.to_dict() for a in self.attachments],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def validate_volume_name(name: object, field: str = "name") -> str:
    """A volume name: it becomes a file name and the disk's serial in the guest."""
    if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid volume name {name!r}: must be {VOLUME_NAME_RULE}", field=field
        )
    if name.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            f"invalid volume name {name!r}: names starting with {RESERVED_PREFIX!r} are "
            "reserved for Volant's own disks",
            field=field,
        )
    return name


def parse_size(value: object, field: str = "size") -> int:
    """A size in bytes from an integer or a text like "1G" (powers of 1024), checked against
    the limits and rounded up to a whole MiB."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{field} must be {SIZE_RULE}, got {value!r}", field=field)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value.strip())):
        size = int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    else:
        raise InvalidArgument(f"{field} must be {SIZE_RULE}, got {value!r}", field=field)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidArgument(
            f"{field} must be between {format_size(MIN_SIZE)} and {format_size(MAX_SIZE)}, "
            f"got {value!r}",
            field=field,
        )
    return -(-size // MIB) * MIB  # both limits are whole MiB: still within them


def format_size(size: int) -> str:
    """The largest unit that divides size: 1G, 1536M, 17K."""
    for unit in ("T", "G", "M", "K"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def validate_mount_path(path: object, field: str = "volumes.path") -> str:
    """Where the guest mounts a volume: absolute, normalised, not a system directory."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(
            f"a volume's mount path must be absolute, got {path!r}",
            hint="e.g. --volume data:/srv/data",
            field=field,
        )
    if len(path) > MAX_PATH or any(not (0x20 < ord(c) < 0x7F) or c == ":" for c in path):
        raise InvalidArgument(
            f"a volume's mount path must be printable ASCII without spaces or ':', "
            f"at most {MAX_PATH} characters, got {path!r}",
            field=field,
        )
    parts = path.split("/")[1:]
    if any(part in ("..", ".") for part in parts):
        raise InvalidArgument(
            f"a volume's mount path may not hold '.' or '..': {path!r}", field=field
        )
    normal = "/" + "/".join(part for part in parts if part)
    if normal in _FORBIDDEN_PATHS:
        raise InvalidArgument(
            f"a volume cannot be mounted at {normal}: the guest needs it",
            hint="mount it below a directory of its own, e.g. /data",
            field=field,
        )
    return normal


def validate_mounts(mounts: object) -> tuple[VolumeMount, ...]:
    """A VM's volumes: valid names and paths, no volume twice, no path twice."""
    if not isinstance(mounts, tuple | list):
        raise InvalidArgument("volumes must be a list", field="volumes")
    out: list[VolumeMount] = []
    names: set[str] = set()
    paths: set[str] = set()
    for mount in mounts:
        if not isinstance(mount, VolumeMount):
            raise InvalidArgument(
                "volumes must be a list of {name, path, read_only}", field="volumes"
            )
        name = validate_volume_name(mount.name, "volumes.name")
        path = validate_mount_path(mount.path)
        if name in names:
            raise InvalidArgument(
                f"volume {name!r} is attached twice; a volume is mounted once per VM",
                field="volumes",
            )
        if path in paths:
            raise InvalidArgument(f"two volumes are mounted at {path}", field="volumes")
        names.add(name)
        paths.add(path)
        out.append(VolumeMount(name, path, bool(mount.read_only)))
    return tuple(out)


def parse_volume_option(text: str) -> VolumeMount:
    """NAME:/path[:ro|:rw], as volar's --volume takes it."""
    name, sep, rest = text.partition(":")
    if not sep:
        raise InvalidArgument(f"--volume {text!r}: expected NAME:/path[:ro]", field="volumes")
    path, _sep, mode = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    if mode not in ("", "ro", "rw"):
        raise InvalidArgument(
            f"--volume {text!r}: the mode is ro or rw, not {mode!r}", field="volumes"
        )
    return VolumeMount(
        validate_volume_name(name, "volumes.name"), validate_mount_path(path), mode == "ro"
    )
