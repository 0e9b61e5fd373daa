"""Frozen domain objects shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from volant.model.publish import PortMapping
from volant.model.volumes import VolumeMount

# The guest agent's TCP (and vsock) port.
AGENT_PORT = 8080


class VMStatus(StrEnum):
    """Lifecycle states of a VM (DESIGN.md, VM lifecycle)."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    ERROR = "error"

    @property
    def is_active(self) -> bool:
        """True while a hypervisor process is (or should be) alive."""
        return self in (VMStatus.STARTING, VMStatus.RUNNING, VMStatus.STOPPING)


class EventType(StrEnum):
    VM_CREATED = "VM_CREATED"
    VM_STARTING = "VM_STARTING"
    VM_RUNNING = "VM_RUNNING"
    VM_STOPPED = "VM_STOPPED"
    VM_CRASHED = "VM_CRASHED"
    VM_DELETED = "VM_DELETED"
    VM_ERROR = "VM_ERROR"
    # A command ran in the VM's workload (payload: caller, argv, tty, exit_code; timed_out and
    # error when so): `volar vms exec`, REST, MCP exec_command.
    VM_EXEC = "VM_EXEC"
    # A dhcp-mode VM's address, learned from volantd's dnsmasq (payload: ip_address, mac).
    VM_ADDRESS = "VM_ADDRESS"
    # volantd found a host resource that disagreed with its records at start and repaired it
    # (payload: kind, name, action "removed" or "adopted", reason).
    HOST_REPAIRED = "HOST_REPAIRED"
    # A plugin build from an OCI image (payload: build id, image, plugin; see docs/events.md).
    BUILD_STARTED = "BUILD_STARTED"
    BUILD_PROGRESS = "BUILD_PROGRESS"  # payload also: step, fraction (0..1), detail
    BUILD_SUCCEEDED = "BUILD_SUCCEEDED"  # payload also: digest, cache_hit
    BUILD_FAILED = "BUILD_FAILED"  # payload also: code, reason
    BUILD_CANCELLED = "BUILD_CANCELLED"


class ResourceKind(StrEnum):
    """Host resources volantd makes for a VM; each has a record in the store (DESIGN.md, Host
    resources and crash safety)."""

    SCOPE = "scope"  # the hypervisor's transient unit (or, without systemd, its process)
    TAP = "tap"
    RUN_DIR = "run_dir"
    CONSOLE_LOG = "console_log"
    MACHINE = "machine"  # systemd-machined registration
    # A plugin build's worker (a transient unit, or without systemd its process) and its work
    # directory; recorded under the build's id, never wanted after a volantd restart.
    BUILD_UNIT = "build_unit"
    BUILD_DIR = "build_dir"
    DISK = "disk"  # a VM's writable disk (the overlay's upper layer), under the state dir
    VOLUME = "volume"  # a volume's file: no VM's (its record's vm is ""), it outlives them
    # A running VM's published ports: its nftables rules in table inet volant (named after the VM).
    PORT_RULES = "port_rules"
    # volantd's dnsmasq on the bridge (a transient service, or a child): no VM's, named by its
    # unit; and a dhcp-mode VM's lease in its lease file, named by the address.
    DNSMASQ = "dnsmasq"
    LEASE = "lease"


class ResourceState(StrEnum):
    """A record is written as intended before the host change and present after it."""

    INTENDED = "intended"
    PRESENT = "present"


class EndCause(StrEnum):
    """Why a hypervisor ended, as the hypervisor itself reported it (not what volantd asked)."""

    GUEST_POWEROFF = "guest-poweroff"  # the guest powered itself off (ACPI S5)
    GUEST_RESET = "guest-reset"  # a reboot or triple fault, turned into an exit (-no-reboot)
    GUEST_PANIC = "guest-panic"  # the guest kernel panicked (reported through pvpanic)
    HOST_REQUEST = "host-request"  # a signal or a monitor command from the host
    UNKNOWN = "unknown"  # it said nothing: killed, crashed, or nobody was listening


@dataclass(frozen=True)
class HypervisorEnd:
    """A hypervisor's own account of its end: the cause and its words for it."""

    cause: EndCause = EndCause.UNKNOWN
    detail: str = ""  # e.g. QEMU's SHUTDOWN reason "guest-shutdown"


class NetworkMode(StrEnum):
    BRIDGED = "bridged"
    DHCP = "dhcp"
    VSOCK = "vsock"


class ChannelKind(StrEnum):
    """How the host reaches the agent of a network-less VM (volant.runtime.agentlink)."""

    VSOCK = "vsock"  # QEMU vhost-vsock-pci: AF_VSOCK to (cid, port)
    HYBRID = "hybrid"  # Cloud Hypervisor's hybrid vsock: a unix socket, `CONNECT <port>`
    SERIAL = "serial"  # a virtio-serial port on a unix socket, multiplexed into channels


@dataclass(frozen=True)
class AgentChannel:
    """The host-local channel of a network-less VM; cid is its vsock context id (>= 3)."""

    kind: ChannelKind
    cid: int


@dataclass(frozen=True)
class VMSpec:
    """What a caller asks for when creating a VM.

    cpu_cores and memory_mb are None when the caller names none: the engine then takes the
    plugin manifest's resources, and failing those the host's defaults.
    """

    name: str
    plugin: str
    cpu_cores: int | None = None
    memory_mb: int | None = None
    kernel_args: str = ""
    # Cut off from every other guest on the bridge (it still reaches the host and beyond).
    isolated: bool = False
    # A rootfs plugin's writes go to a tmpfs, lost at stop, instead of a per-VM disk.
    ephemeral: bool = False
    # Volumes attached at create, mounted by the agent at their paths on every start.
    volumes: tuple[VolumeMount, ...] = ()
    # Host ports forwarded to the VM while it runs; None: the manifest's network.publish.
    publish: tuple[PortMapping, ...] | None = None


@dataclass(frozen=True)
class VirtualMachine:
    """A VM as the store records it."""

    id: int
    name: str
    status: VMStatus
    pid: int | None
    ip_address: str | None
    mac: str
    cpu_cores: int
    memory_mb: int
    plugin: str
    runtime: str
    kernel_cmdline: str
    unit: str
    created_at: datetime
    updated_at: datetime
    status_reason: str = ""  # why the VM is in error, crashed or stopped on its own
    # The plugin manifest (canonical JSON) as it was when the VM was created.
    manifest_json: str = field(default="", repr=False)
    isolated: bool = False
    ephemeral: bool = False
    # What the guest's agent wants on every request. Only volantd and that guest know it: it is
    # in no representation (to_dict), event, log line or repr.
    agent_secret: str = field(default="", repr=False)
    publish: tuple[PortMapping, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "pid": self.pid,
            "ip_address": self.ip_address,
            "mac_address": self.mac,
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "plugin": self.plugin,
            "runtime": self.runtime,
            "kernel_cmdline": self.kernel_cmdline,
            "unit": self.unit,
            "isolated": self.isolated,
            "ephemeral": self.ephemeral,
            "publish": [str(mapping) for mapping in self.publish],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class HostResource:
    """One host resource as the store records it."""

    kind: ResourceKind
    name: str
    vm: str
    state: ResourceState
    updated_at: datetime


@dataclass(frozen=True)
class AgentEndpoint:
    """A guest agent as the host reaches it: the guest's address and the VM's agent secret."""

    address: str
    secret: str = field(repr=False)
    # A network-less VM's agent: the unix socket its relay serves (address is then "").
    socket: Path | None = None


@dataclass(frozen=True)
class Event:
    """A persisted lifecycle event; ids increase monotonically."""

    id: int
    ts: datetime
    type: EventType
    vm: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.isoformat(),
            "type": self.type.value,
            "vm": self.vm,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Disk:
    """A raw disk image the hypervisor attaches as virtio-blk. The guest finds it by its
    serial (/sys/block/vdX/serial; virtio-blk keeps at most 20 bytes of it)."""

    path: Path
    serial: str
    read_only: bool = True


@dataclass(frozen=True)
class GuestMount:
    """A disk (found by its serial) that the guest agent mounts at path inside the workload's
    root: a volume. Its Disk is in LaunchSpec.disks with the same serial."""

    serial: str
    path: str
    read_only: bool = False


# The serial of the config disk every VM gets (volant.runtime.configdisk).
CONFIG_DISK_SERIAL = "volant-config"
# Serials of a rootfs plugin's shared, read-only root and of a VM's own writable disk.
ROOTFS_SERIAL = "volant-rootfs"
UPPER_SERIAL = "volant-upper"


@dataclass(frozen=True)
class GuestRoot:
    """The workload's root in a rootfs plugin's guest: the rootfs disk (format, found by its
    serial) under an overlay whose upper layer is the disk with serial upper, or a tmpfs when
    upper is empty (an ephemeral VM). Both disks are in LaunchSpec.disks."""

    format: str
    rootfs: str = ROOTFS_SERIAL
    upper: str = ""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a hypervisor launcher needs to build its command line."""

    name: str
    cpus: int
    memory_mb: int
    kernel: Path
    initramfs: Path | None
    cmdline: str
    mac: str
    run_dir: Path
    console_log: Path
    tap: str | None = None
    # The config disk (written by volantd before launch), then the plugin's and the VM's
    # disks, attached in this order.
    config_disk: Path | None = None
    disks: tuple[Disk, ...] = ()
    # Where the agent mounts disks of `disks` in the workload's root (the config disk says).
    mounts: tuple[GuestMount, ...] = ()
    # None for an initramfs plugin: the workload runs in the agent's own root.
    root: GuestRoot | None = None
    start_paused: bool = False
    # Set for a network-less VM (no tap): how the host reaches its agent.
    agent_channel: AgentChannel | None = None

    @property
    def all_disks(self) -> tuple[Disk, ...]:
        """Every disk the hypervisor attaches: the config disk first."""
        config = () if self.config_disk is None else (Disk(self.config_disk, CONFIG_DISK_SERIAL),)
        return (*config, *self.disks)

    @property
    def api_socket(self) -> Path:
        """QMP socket for QEMU, REST API socket for Cloud Hypervisor."""
        return self.run_dir / "api.sock"

    @property
    def serial_socket(self) -> Path:
        return self.run_dir / "serial.sock"


@dataclass(frozen=True)
class ScopeLimits:
    """Resource properties put on a VM's scope unit."""

    cpus: int
    memory_mb: int
    tasks_max: int = 256

    @property
    def cpu_quota_percent(self) -> int:
        return self.cpus * 100

    @property
    def memory_max_bytes(self) -> int:
        # Guest RAM plus headroom for the hypervisor's own code, page tables and device buffers.
        headroom_mb = max(64, self.memory_mb // 4)
        return (self.memory_mb + headroom_mb) * 1024 * 1024


@dataclass(frozen=True)
class Launched:
    """A hypervisor process that a supervisor started."""

    pid: int
    unit: str  # empty when no systemd unit holds it


@dataclass(frozen=True)
class Usage:
    """Resources a VM's hypervisor has used; None where the host cannot tell (no accounting).

    disk_bytes is what the VM's writable disk takes on the host (allocated blocks: its own
    writes, the shared rootfs not counted) and disk_size_bytes the size the guest sees; both
    None when the VM has no disk (an initramfs plugin, or an ephemeral VM).
    """

    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    disk_size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_seconds": self.cpu_seconds,
            "memory_bytes": self.memory_bytes,
            "disk_bytes": self.disk_bytes,
            "disk_size_bytes": self.disk_size_bytes,
        }


class VMSortKey(StrEnum):
    """Columns a VM list can be ordered by."""

    NAME = "name"
    STATUS = "status"
    PLUGIN = "plugin"
    CPU_CORES = "cpu_cores"
    MEMORY_MB = "memory_mb"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"


@dataclass(frozen=True)
class VMQuery:
    """Filters, order and window of a VM list; total counts matches before the window."""

    status: VMStatus | None = None
    plugin: str | None = None
    prefix: str = ""
    sort: VMSortKey = VMSortKey.NAME
    descending: bool = False
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class HostStats:
    """The host's CPU, memory and load as the kernel reports them."""

    cpus: int
    cpu_percent: float
    load_average: tuple[float, float, float]
    memory_total_bytes: int
    memory_available_bytes: int
    uptime_seconds: float
