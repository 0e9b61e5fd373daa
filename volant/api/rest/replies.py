"""Response bodies as pydantic models: the OpenAPI document describes answers with them.

Handlers encode with the domain objects' `to_dict`; the `api.check_openapi` setting (on in
every test tier) checks each answer against these schemas, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from volant.model import EventType, VMStatus


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(Reply):
    status: str = Field(description="Always `ok` while volantd serves requests")


class VM(Reply):
    """A VM as the store records it."""

    id: int
    name: str
    status: VMStatus
    status_reason: str = Field(
        description="Why the VM is in error or crashed, or stopped on its own; empty otherwise"
    )
    pid: int | None = Field(description="Hypervisor process id while it runs")
    ip_address: str | None
    mac_address: str
    cpu_cores: int
    memory_mb: int
    plugin: str
    runtime: str = Field(description="Hypervisor kind: qemu or cloud-hypervisor")
    kernel_cmdline: str
    unit: str = Field(description="The systemd scope holding the hypervisor; empty without one")
    isolated: bool = Field(
        description="Cut off from every other guest (asked at create, or the plugin's "
        "network.isolated)"
    )
    ephemeral: bool = Field(
        description="Asked at create: its writes go to a tmpfs, not a disk (a plugin's "
        "rootfs.ephemeral has the same effect)"
    )
    publish: list[str] = Field(
        description="Host ports forwarded to it while it runs, as [ADDR:]HOST_PORT:VM_PORT/PROTO "
        "(without ADDR: every address of the host)"
    )
    created_at: str = Field(description="ISO 8601 time")
    updated_at: str = Field(description="ISO 8601 time")


class Usage(Reply):
    cpu_seconds: float | None = Field(description="CPU time used; null when unknown")
    memory_bytes: int | None = Field(description="Memory in use; null without memory accounting")
    disk_bytes: int | None = Field(
        description="Host space the VM's own disk takes (its writes; the shared rootfs is not "
        "counted); null without a disk (initramfs plugins, ephemeral VMs)"
    )
    disk_size_bytes: int | None = Field(
        description="Size of the VM's disk as the guest sees it; null without a disk"
    )


class VMVolume(Reply):
    name: str
    path: str = Field(description="Where the guest mounts it")
    read_only: bool


class VMWithUsage(VM):
    usage: Usage
    volumes: list[VMVolume] = Field(description="Volumes attached at create, by name")


class VolumeAttachment(Reply):
    vm: str
    path: str = Field(description="Where that VM's guest mounts the volume")
    read_only: bool
    vm_status: str


class Volume(Reply):
    name: str
    size_bytes: int = Field(description="The size the guest sees")
    allocated_bytes: int | None = Field(
        description="Bytes the sparse file takes on the host; null when the file is missing"
    )
    formatted: bool = Field(description="ext4 made on it (at its first use)")
    missing: bool = Field(description="The volume is recorded but its file is gone")
    in_use_by: str | None = Field(description="The VM running with it now, if any")
    attachments: list[VolumeAttachment]
    created_at: str
    updated_at: str


class VolumeList(Reply):
    volumes: list[Volume]
    total: int


class VMList(Reply):
    vms: list[VM]
    total: int = Field(description="VMs matching the filters, before limit and offset")
    limit: int | None
    offset: int


class Event(Reply):
    id: int = Field(description="Durable, monotonically increasing event id")
    ts: str = Field(description="ISO 8601 time")
    type: EventType
    vm: str
    payload: dict[str, Any]


class EventList(Reply):
    events: list[Event]


class Plugin(Reply):
    id: int
    name: str
    version: str
    runtime: str
    digest: str = Field(description="sha256 of the canonical manifest")
    enabled: bool
    signer: str | None = Field(description="Trusted key that signed the manifest")
    source: str | None = Field(description="Where the manifest was installed from")
    created_at: str
    updated_at: str


class PluginWithManifest(Plugin):
    manifest: dict[str, Any]


class PluginList(Reply):
    plugins: list[Plugin]
    total: int


class LogLines(Reply):
    lines: list[dict[str, Any]] = Field(description="Workload output: seq, ts, stream, text")


class HostStatus(Reply):
    cpus: int
    cpu_percent: float = Field(description="Host CPU busy since the previous status call")
    load_average: list[float] = Field(description="1, 5 and 15 minute load")
    memory_total_bytes: int
    memory_available_bytes: int
    uptime_seconds: float


class SystemStatus(Reply):
    version: str
    supervisor: str
    hypervisor: str
    vms_total: int
    vms_by_status: dict[str, int]
    ip_pool_subnet: str
    ip_pool_leased: int
    ip_pool_total: int
    event_subscribers: int
    usage: Usage
    host: HostStatus


class SystemInfo(Reply):
    version: str
    api_version: str
    hostname: str
    kernel: str
    supervisor: str
    hypervisor: str
    accel: str
    state_dir: str
    bridge: str
    subnet: str
    host_ip: str
    plugins_require_signature: bool
    api_key_required: bool


def free_json(description: str) -> dict[str, Any]:
    """A JSON body whose shape belongs to someone else (a workload, a manifest)."""
    return {"description": description}
