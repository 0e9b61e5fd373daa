"""The plugin manifest and the agent secret as the agent sees them, and where they come from.

The manifest: `volant.manifest=` on the kernel command line (base64url of gzip of JSON, no
padding), else the config disk. The secret every request but /healthz must carry: only on the
config disk, never on the command line (every local user of the host reads QEMU's argv). The
config disk is a raw block device (no filesystem, so the guest needs only virtio_blk) laid out as:

    offset  size  content
    0       8     magic b"VOLCONF1"
    8       4     N, length of the document, unsigned big-endian
    12      32    sha256 of the document
    44      N     UTF-8 JSON: {"agent_secret": "...", "manifest": {...} or null,
                              "storage": {...}}   (storage only when the host sends one)
    44+N    ...   zero padding up to a multiple of 512 bytes (a whole sector)

storage (volant_agent.rootfs) says how to assemble the workload's root and which disks to
mount in it. `encode_config_disk` writes exactly that; the host side keeps its own copy of the
layout.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

DISK_MAGIC = b"VOLCONF1"
DISK_HEADER = struct.Struct(">8sI32s")
DISK_MAX_DOCUMENT = 1 << 20  # far above any sane manifest; bounds what a bad disk can make us read
SECTOR = 512
CMDLINE_KEY = "volant.manifest="


class ManifestError(ValueError):
    """The manifest is missing, malformed or fails validation; the message says which."""


class RestartPolicy(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class Action:
    """A legacy action route: `<method> /v1<path>` proxied to the workload's base_url + path."""

    name: str
    method: str
    path: str
    timeout_ms: int = 30_000


@dataclass(frozen=True)
class Workload:
    entrypoint: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    base_url: str | None = None
    health_path: str | None = None
    health_timeout_ms: int = 2_000
    # How long a starting workload may fail its check before it is reported unhealthy.
    health_start_period_ms: int = 30_000
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    # Who it runs as ("name", "uid", with ":group" or ":gid"); None: root.
    user: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    workload: Workload | None
    actions: tuple[Action, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)


def _str(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{where}{key} must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ManifestError(f"{where}{key} must be a positive integer")
    return value


def _obj(obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key) or {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}{key} must be an object")
    return value


def _workload(doc: Mapping[str, Any]) -> Workload | None:
    raw = _obj(doc, "workload", "")
    if not raw:
        return None
    entry = raw.get("entrypoint")
    if not isinstance(entry, list) or not entry or not all(isinstance(a, str) for a in entry):
        raise ManifestError("workload.entrypoint must be a non-empty list of strings")
    env = _obj(raw, "env", "workload.")
    if not all(isinstance(v, str) for v in env.values()):
        raise ManifestError("workload.env values must be strings")
    # Only workload.health_check counts: the Go agent's top-level health_check{endpoint} is
    # refused by the host's schema, so a manifest that reaches a guest never carries one.
    health = _obj(raw, "health_check", "workload.")
    path = _str(health, "path", "workload.health_check.")
    try:
        restart = RestartPolicy(raw.get("restart", RestartPolicy.ON_FAILURE))
    except ValueError as exc:
        raise ManifestError("workload.restart must be always, on-failure or never") from exc
    base_url = _str(raw, "base_url", "workload.")
    if path and not base_url:
        raise ManifestError("workload.health_check needs workload.base_url")
    return Workload(
        entrypoint=tuple(entry),
        env={k: v for k, v in env.items() if k},
        workdir=_str(raw, "workdir", "workload."),
        base_url=base_url,
        health_path=path or None,
        health_timeout_ms=_int(health, "timeout_ms", "workload.health_check.", 2_000),
        health_start_period_ms=_int(health, "start_period_ms", "workload.health_check.", 30_000),
        restart=restart,
        user=_str(raw, "user", "workload.") or None,
    )


def _actions(doc: Mapping[str, Any]) -> tuple[Action, ...]:
    actions: list[Action] = []
    for name, spec in sorted(_obj(doc, "actions", "").items()):
        if not isinstance(spec, dict):
            raise ManifestError(f"actions.{name} must be an object")
        method = _str(spec, "method", f"actions.{name}.")
        path = _str(spec, "path", f"actions.{name}.")
        if not method or not path or not path.startswith("/"):
            raise ManifestError(f"actions.{name} needs a method and a path starting with /")
        timeout = _int(spec, "timeout_ms", f"actions.{name}.", 30_000)
        actions.append(Action(name, method.upper(), path, timeout))
    return tuple(actions)


def parse(doc: object) -> Manifest:
    """Validate a decoded JSON document into a Manifest."""
    if not isinstance(doc, dict):
        raise ManifestError("the manifest must be a JSON object")
    name = _str(doc, "name", "")
    if not name:
        raise ManifestError("name is required")
    return Manifest(
        name=name,
        version=_str(doc, "version", "", "") or "",
        workload=_workload(doc),
        actions=_actions(doc),
        raw=doc,
    )


def decode_cmdline_value(value: str) -> Manifest:
    """Decode the value of `volant.manifest=` (base64url(gzip(json)), padding optional)."""
    try:
        packed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        # Bounded: a gzip bomb on the command line must not eat the guest's memory.
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as gz:
            raw = gz.read(DISK_MAX_DOCUMENT + 1)
        if len(raw) > DISK_MAX_DOCUMENT:
            raise ManifestError("volant.manifest decompresses to more than 1 MiB")
        return parse(json.loads(raw))
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"volant.manifest is not valid: {exc}") from exc


def from_cmdline(cmdline: str) -> Manifest | None:
    """The manifest on a kernel command line, or None when it carries none."""
    for token in cmdline.split():
        if token.startswith(CMDLINE_KEY):
            return decode_cmdline_value(token[len(CMDLINE_KEY) :])
    return None


@dataclass(frozen=True)
class GuestConfig:
    """What the host handed over: the manifest (None when there is none or it is bad), where it
    came from ("cmdline", a disk path, "none", or "error: <why>"), and the agent secret (None
    when no config disk carries one)."""

    manifest: Manifest | None
    source: str
    secret: str | None = field(default=None, repr=False)
    # The config disk's storage document, as it is (volant_agent.rootfs parses it); None when
    # the host sent none (an initramfs plugin without volumes).
    storage: Any = None

    @property
    def error(self) -> str | None:
        return self.source.removeprefix("error: ") if self.source.startswith("error:") else None


def encode_config_disk(
    manifest: Mapping[str, Any] | None, secret: str, storage: Mapping[str, Any] | None = None
) -> bytes:
    """A config-disk image holding manifest, secret and storage (left out when None); the
    module docstring has the layout."""
    doc: dict[str, Any] = {"agent_secret": secret, "manifest": manifest}
    if storage is not None:
        doc["storage"] = storage
    document = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if len(document) > DISK_MAX_DOCUMENT:
        raise ManifestError("config disk document is larger than 1 MiB")
    image = DISK_HEADER.pack(DISK_MAGIC, len(document), hashlib.sha256(document).digest())
    image += document
    return image + b"\0" * (-len(image) % SECTOR)


def read_config_disk(path: Path) -> dict[str, Any] | None:
    """The JSON object on a config disk (a device or an image file); None when path is not a
    config disk. ManifestError when it is one but its document is bad."""
    with path.open("rb") as fh:
        header = fh.read(DISK_HEADER.size)
        if len(header) < DISK_HEADER.size:
            return None
        magic, length, digest = DISK_HEADER.unpack(header)
        if magic != DISK_MAGIC:
            return None
        if length > DISK_MAX_DOCUMENT:
            raise ManifestError(f"{path}: config disk claims a {length}-byte document")
        document = fh.read(length)
    if len(document) != length or hashlib.sha256(document).digest() != digest:
        raise ManifestError(f"{path}: config disk document is truncated or corrupt")
    try:
        doc = json.loads(document)
    except ValueError as exc:
        raise ManifestError(f"{path}: config disk holds no JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: config disk holds no JSON object")
    return doc


def block_devices(sys_block: Path = Path("/sys/block"), dev: Path = Path("/dev")) -> list[Path]:
    """Virtio disks in name order (vda, vdb, ...): where a config disk may be."""
    try:
        names = sorted(p.name for p in sys_block.iterdir() if p.name.startswith("vd"))
    except OSError:
        return []
    return [dev / name for name in names]


def _first_config_disk(disks: Iterable[Path]) -> tuple[dict[str, Any] | None, str]:
    """(document, disk) of the first config disk; (None, "none") when there is none."""
    for disk in disks:
        try:
            doc = read_config_disk(disk)
        except OSError:
            continue
        if doc is not None:
            return doc, str(disk)
    return None, "none"


def load(cmdline: str, disks: Iterable[Path]) -> GuestConfig:
    """The manifest (the command line's, else the config disk's) and the secret (the config
    disk's). Never raises: a bad manifest or disk leaves manifest None and says why in source,
    and the secret is still read when the disk holds one."""
    doc: dict[str, Any] | None = None
    where, problem = "none", ""
    try:
        doc, where = _first_config_disk(disks)
    except ManifestError as exc:
        problem = str(exc)
    raw_secret = doc.get("agent_secret") if doc is not None else None
    secret = raw_secret if isinstance(raw_secret, str) and raw_secret else None
    storage = doc.get("storage") if doc is not None else None
    try:
        found = from_cmdline(cmdline)
        if found is not None:
            return GuestConfig(found, "cmdline", secret, storage)
        if problem:
            raise ManifestError(problem)
        raw = doc.get("manifest") if doc is not None else None
        if raw is None:
            return GuestConfig(None, "none", secret, storage)
        return GuestConfig(parse(raw), where, secret, storage)
    except ManifestError as exc:
        return GuestConfig(None, f"error: {exc}", secret, storage)
