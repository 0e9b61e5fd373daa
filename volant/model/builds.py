"""Plugin builds from OCI images: the request, what the image says, and a build as it runs.

A build pulls an image, makes its erofs root file system in a worker outside volantd's sandbox,
and installs a plugin whose manifest starts from the image config; `BuildSpec` carries the
operator's overrides of each workload field (None means "as the image says").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from volant.model.errors import InvalidArgument


class BuildState(StrEnum):
    """running → succeeded | failed | cancelled; only running is not final."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self is not BuildState.RUNNING


@dataclass(frozen=True)
class BuildSpec:
    """What `volar plugins build` asks for. Empty strings and None keep the image's value.

    args replaces the image's Cmd (what follows the Entrypoint); entrypoint replaces the
    Entrypoint and, as with `docker run --entrypoint`, drops the image's Cmd too. env is merged
    over the image's Env. A health_path makes the workload `http` (base_url defaults to the
    first exposed TCP port on 127.0.0.1).
    """

    image: str
    name: str = ""
    version: str = ""
    replace: bool = False
    entrypoint: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    workload_type: str = ""  # "http" | "process"; "" picks http when a health path is given
    base_url: str = ""
    health_path: str = ""
    cpu_cores: int = 1
    memory_mb: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildSpec:
        """A spec from front-end input (D-Bus a{sv}, MCP arguments), checking each field's type;
        InvalidArgument names the first wrong one."""
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise InvalidArgument(f"{unknown[0]}: unknown build option", field=unknown[0])
        values: dict[str, Any] = {}
        for key, value in data.items():
            kind = _FIELD_TYPES[key]
            if kind is list and (
                not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)
            ):
                raise InvalidArgument(f"{key}: expected a list of strings", field=key)
            if kind is dict and (
                not isinstance(value, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                raise InvalidArgument(f"{key}: expected an object of strings", field=key)
            if kind in (str, bool) and type(value) is not kind:
                raise InvalidArgument(f"{key}: expected a {kind.__name__}", field=key)
            if kind is int and (type(value) is not int):
                raise InvalidArgument(f"{key}: expected an integer", field=key)
            values[key] = tuple(value) if kind is list else value
        if "image" not in values:
            raise InvalidArgument("image: is required", field="image")
        return cls(**values)


_FIELD_TYPES: dict[str, type] = {
    "image": str,
    "name": str,
    "version": str,
    "replace": bool,
    "entrypoint": list,
    "args": list,
    "env": dict,
    "workdir": str,
    "user": str,
    "workload_type": str,
    "base_url": str,
    "health_path": str,
    "cpu_cores": int,
    "memory_mb": int,
}


@dataclass(frozen=True)
class ImageFacts:
    """What a finished build worker reports: the image, its config and the rootfs it made."""

    image: str  # the reference as given
    digest: str  # the manifest digest ("sha256:…")
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    exposed_ports: tuple[str, ...]
    rootfs_path: str
    rootfs_checksum: str
    rootfs_size: int
    cache_hit: bool  # no blob fetched and no rootfs built: everything came from the cache

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageFacts:
        """Read the worker's final report (a JSON object); KeyError/TypeError when malformed."""
        return cls(
            image=str(data["image"]),
            digest=str(data["digest"]),
            entrypoint=tuple(str(a) for a in data["entrypoint"]),
            cmd=tuple(str(a) for a in data["cmd"]),
            env={str(k): str(v) for k, v in dict(data["env"]).items()},
            workdir=str(data["workdir"]),
            user=str(data["user"]),
            exposed_ports=tuple(str(p) for p in data["exposed_ports"]),
            rootfs_path=str(data["rootfs_path"]),
            rootfs_checksum=str(data["rootfs_checksum"]),
            rootfs_size=int(data["rootfs_size"]),
            cache_hit=bool(data["cache_hit"]),
        )


@dataclass(frozen=True)
class Build:
    """A build as volantd tracks it (in memory: a build does not survive a volantd restart;
    whatever it left on the host is removed at the next start)."""

    id: str
    image: str
    plugin: str  # the plugin name it installs (known before the image is pulled)
    state: BuildState
    step: str = ""
    fraction: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    digest: str = ""
    cache_hit: bool = False
    error_code: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "plugin": self.plugin,
            "state": self.state.value,
            "step": self.step,
            "fraction": self.fraction,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "digest": self.digest or None,
            "cache_hit": self.cache_hit,
            "error_code": self.error_code or None,
            "error": self.error or None,
        }
