"""Plugins: a validated manifest, and an installed plugin as the store records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from volant.model.publish import PortMapping
from volant.model.types import NetworkMode


class WorkloadType(StrEnum):
    """What the guest agent runs: an HTTP service it health-checks and proxies, or a process."""

    HTTP = "http"
    PROCESS = "process"


class RestartPolicy(StrEnum):
    """When the guest agent restarts the workload (agent/README.md)."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class Resources:
    cpu_cores: int
    memory_mb: int


@dataclass(frozen=True)
class HealthCheck:
    path: str
    timeout_ms: int = 2000
    start_period_ms: int = 30_000


@dataclass(frozen=True)
class Workload:
    type: WorkloadType
    entrypoint: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    base_url: str = ""
    health_check: HealthCheck | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    # "name|uid[:group|gid]" in the rootfs' /etc/passwd and /etc/group; "" is root.
    user: str = ""


@dataclass(frozen=True)
class Artifact:
    """A boot artifact (kernel, initramfs or root filesystem): a URL or a local path."""

    url: str = ""
    path: str = ""
    checksum: str = ""  # "sha256:<64 hex>"; required for a URL


class RootfsFormat(StrEnum):
    """The file system of a rootfs disk."""

    EROFS = "erofs"
    SQUASHFS = "squashfs"
    EXT4 = "ext4"


@dataclass(frozen=True)
class RootfsArtifact(Artifact):
    """A read-only root file system disk shared by every VM of the plugin."""

    format: RootfsFormat = RootfsFormat.EROFS
    # Writes go to a tmpfs (lost at stop) instead of a per-VM disk.
    ephemeral: bool = False


@dataclass(frozen=True)
class Action:
    """A named HTTP route of the workload that the agent proxies."""

    method: str
    path: str
    timeout_ms: int = 30_000


@dataclass(frozen=True)
class Manifest:
    """A plugin manifest that passed schema and semantic validation.

    digest is "sha256:<hex>" of canonical_json: the document as parsed, with sorted keys and
    compact separators, so YAML and JSON spellings of one manifest share a digest.
    """

    schema_version: int
    name: str
    version: str
    runtime: str
    resources: Resources
    workload: Workload
    network: NetworkMode
    initramfs: Artifact | None = None
    rootfs: RootfsArtifact | None = None
    kernel: Artifact | None = None
    actions: dict[str, Action] = field(default_factory=dict)
    openapi: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # network.isolated: every VM of the plugin is cut off from the other guests.
    isolated: bool = False
    # network.publish: the host ports each VM publishes unless it names its own.
    publish: tuple[PortMapping, ...] = ()
    # The OCI image the plugin was built from, and its manifest digest ("" when none).
    image: str = ""
    image_digest: str = ""
    digest: str = ""
    canonical_json: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class Plugin:
    """An installed plugin as the store records it."""

    id: int
    name: str
    version: str
    runtime: str
    manifest_json: str
    digest: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    signer: str = ""  # name of the trusted key that signed it; empty when unsigned
    source: str = ""  # URL the manifest was installed from; relative artifacts resolve there

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "digest": self.digest,
            "enabled": self.enabled,
            "signer": self.signer or None,
            "source": self.source or None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class PluginSource:
    """What an install request hands over: manifest text, or a URL to fetch it from.

    origin is where the text came from (a file:// or http(s) URL of the manifest); relative
    artifact paths in the manifest resolve against it. For a URL install it is the URL itself.
    signature is the detached Ed25519 signature (base64), None when unsigned; a URL install
    without one also tries `<url>.sig`.
    """

    text: bytes = b""
    url: str = ""
    signature: str | None = None
    origin: str = ""
