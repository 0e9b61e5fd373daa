"""What an OCI image config says, as frozen values: the workload, the platform, the date."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from volant.storage.errors import UnsupportedImage
from volant.storage.reference import ImageRef

# Volant's guests are x86-64 Linux VMs (DESIGN.md, runtime).
SUPPORTED_PLATFORM = ("linux", "amd64")


@dataclass(frozen=True)
class ImageWorkload:
    """The workload an image config describes; a plugin manifest's workload starts from it.

    argv is Entrypoint followed by Cmd (empty when the image names neither); env keeps the
    config's order, a later duplicate winning; workdir and user are "" when unset (the user is
    resolved against the image's /etc/passwd when the VM starts); exposed_ports are hints such
    as "8080/tcp", sorted. entrypoint and cmd are argv's two halves, kept apart because an
    override of the entrypoint drops the image's Cmd too (as `docker run --entrypoint` does).
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


@dataclass(frozen=True)
class Descriptor:
    """One blob of an image: its media type, "sha256:<hex>" digest and size in bytes."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class PulledImage:
    """An image whose blobs are all in the cache.

    digest is the manifest digest the source knows the image by (the registry's, for a pull
    with docker://), the one to pin with. cache_hit is true when nothing but the manifest was
    asked of the source; blobs_fetched and blobs_reused count the layers copied and found.
    """

    ref: ImageRef
    digest: str
    layers: tuple[Descriptor, ...]
    workload: ImageWorkload
    created: int  # the config's "created" as a UNIX time, 0 when absent
    cache_hit: bool
    blobs_fetched: int
    blobs_reused: int


@dataclass(frozen=True)
class Rootfs:
    """An erofs image built from a pulled image; reused when an earlier build was taken from
    the cache instead of building again."""

    path: str
    sha256: str
    size: int
    uuid: str
    reused: bool = False


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UnsupportedImage(f"image config: {what} is not a list of strings")
    return value


def _string(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UnsupportedImage(f"image config: {what} is not a string")
    return value


def workload_from_config(config: Mapping[str, Any]) -> ImageWorkload:
    """The workload of an OCI image config document (its "config" object)."""
    run = config.get("config") or {}
    if not isinstance(run, dict):
        raise UnsupportedImage("image config: config is not an object")
    entrypoint, cmd = _strings(run.get("Entrypoint"), "Entrypoint"), _strings(run.get("Cmd"), "Cmd")
    argv = entrypoint + cmd
    env: dict[str, str] = {}
    for item in _strings(run.get("Env"), "Env"):
        key, sep, value = item.partition("=")
        if sep and key:  # "KEY" without "=" means "inherit" to Docker; a VM has nothing to inherit
            env[key] = value
    ports = run.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise UnsupportedImage("image config: ExposedPorts is not an object")
    exposed = sorted(p if "/" in p else f"{p}/tcp" for p in ports)
    return ImageWorkload(
        argv=tuple(argv),
        env=env,
        workdir=_string(run.get("WorkingDir"), "WorkingDir"),
        user=_string(run.get("User"), "User"),
        exposed_ports=tuple(exposed),
        entrypoint=tuple(entrypoint),
        cmd=tuple(cmd),
    )


def check_platform(config: Mapping[str, Any], ref: ImageRef) -> None:
    """Refuse an image that is not linux/amd64."""
    os_name = config.get("os") or "?"
    arch = config.get("architecture") or "?"
    if (os_name, arch) != SUPPORTED_PLATFORM:
        raise UnsupportedImage(
            f"{ref} is a {os_name}/{arch} image; Volant runs linux/amd64 images only",
            hint="pull the image's linux/amd64 variant",
        )


def pick_platform(index: Mapping[str, Any], ref: ImageRef) -> str:
    """The digest of the linux/amd64 manifest in an image index (manifest list)."""
    entries = index.get("manifests") or []
    seen: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform") or {}
        pair = (platform.get("os", ""), platform.get("architecture", ""))
        seen.append("/".join(pair))
        if pair == SUPPORTED_PLATFORM and isinstance(entry.get("digest"), str):
            return str(entry["digest"])
    offered = ", ".join(sorted(set(seen))) or "none"
    raise UnsupportedImage(
        f"{ref} offers no linux/amd64 image (platforms: {offered}); Volant runs linux/amd64 only"
    )


_FRACTION = re.compile(r"(\.\d{6})\d+")


def created_epoch(config: Mapping[str, Any]) -> int:
    """The config's "created" (RFC 3339) as a UNIX time; 0 when absent or unreadable."""
    created = config.get("created")
    if not isinstance(created, str) or not created:
        return 0
    # Go writes nanoseconds; fromisoformat takes at most microseconds.
    text = _FRACTION.sub(r"\1", created.replace("Z", "+00:00"))
    try:
        return max(0, int(datetime.fromisoformat(text).timestamp()))
    except ValueError:
        return 0
