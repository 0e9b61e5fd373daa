"""The seams the engine coordinates: store, runtime, host supervisor and network.

Implementations live in sibling packages that never import each other; they satisfy these
Protocols structurally, so the engine stays free of peewee, pyroute2, sdbus and QEMU details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol

from volant.model import (
    AgentChannel,
    Artifact,
    Event,
    EventType,
    HostResource,
    HypervisorEnd,
    Launched,
    LaunchSpec,
    Plugin,
    ResourceKind,
    ScopeLimits,
    Usage,
    VirtualMachine,
    VMQuery,
    VMSpec,
    Volume,
    VolumeMount,
)

MacFor = Callable[[str, str | None], str]
ExitCallback = Callable[[str, int, int | None, bool], Awaitable[None]]
"""Called with (vm name, pid, exit status or None when unknown, stopped) when a hypervisor ends.

stopped is True when the host's service manager ended it on request (`systemctl stop` of the
scope, or a host shutdown), as opposed to the hypervisor exiting or being killed on its own.
"""


class Store(Protocol):
    async def ensure_pool(self, network: IPv4Network, exclude: set[IPv4Address]) -> int: ...

    async def create_vm(
        self,
        spec: VMSpec,
        *,
        runtime: str,
        unit: str,
        mac_for: MacFor,
        lease_ip: bool = True,
        manifest_json: str = "",
        agent_secret: str = "",
    ) -> VirtualMachine:
        """Insert the VM in status creating, leasing the lowest free IP in the same transaction.

        Raises NameTaken, PoolExhausted, or NotFound/InvalidState when its plugin is not
        installed or disabled, and then leaves nothing behind.
        """
        ...

    async def get_vm(self, name: str) -> VirtualMachine: ...

    async def list_vms(self) -> list[VirtualMachine]: ...

    async def query_vms(self, query: VMQuery) -> tuple[list[VirtualMachine], int]:
        """The VMs matching query, in its order and window, and the count before the window."""
        ...

    async def update_vm(self, name: str, **fields: Any) -> VirtualMachine:
        """Change status, status_reason, pid, kernel_cmdline, unit or agent_secret; bumps
        updated_at."""
        ...

    async def delete_vm(self, name: str) -> None:
        """Delete the row and release its IP lease in one transaction."""
        ...

    async def set_vm_address(self, name: str, ip_address: str | None) -> VirtualMachine:
        """Record the address a VM without a pool lease got elsewhere (its DHCP lease);
        Conflict when another VM has it, InvalidState when the VM holds a pool lease."""
        ...

    async def append_event(
        self, type: EventType, vm: str, payload: dict[str, Any] | None = None
    ) -> Event: ...

    async def list_events(
        self,
        after_id: int = 0,
        limit: int = 1000,
        *,
        vm: str | None = None,
        types: Collection[EventType] = (),
    ) -> list[Event]:
        """Events after after_id, oldest first, filtered by VM and types before the limit."""
        ...

    async def last_event_id(self) -> int:
        """The largest event id ever handed out (pruned ones too); 0 before the first."""
        ...

    async def prune_events(
        self, older_than: datetime | None = None, keep_rows: int | None = None
    ) -> int:
        """Delete events older than older_than and all but the keep_rows newest; how many."""
        ...

    async def pool_usage(self) -> tuple[int, int]:
        """(leased, total) addresses of the pool."""
        ...

    async def add_plugin(
        self,
        manifest_json: str,
        name: str,
        version: str,
        runtime: str,
        digest: str,
        enabled: bool = True,
        *,
        signer: str = "",
        source: str = "",
        replace: bool = False,
    ) -> Plugin:
        """Record an installed plugin; NameTaken when one of that name exists (unless replace)."""
        ...

    async def get_plugin(self, name: str) -> Plugin: ...

    async def list_plugins(self) -> list[Plugin]: ...

    async def set_plugin_enabled(self, name: str, enabled: bool) -> Plugin: ...

    async def delete_plugin(self, name: str) -> None:
        """Delete the plugin; Conflict while a VM uses it (checked in the same transaction)."""
        ...

    async def intend_resource(self, kind: ResourceKind, name: str, vm: str) -> None:
        """Record a host resource about to be made for vm (before the host change)."""
        ...

    async def resource_made(self, kind: ResourceKind, name: str) -> None:
        """Record that the resource now exists (after the host change)."""
        ...

    async def forget_resource(self, kind: ResourceKind, name: str) -> None:
        """Drop the record of a resource that is gone from the host."""
        ...

    async def list_resources(self, vm: str | None = None) -> list[HostResource]: ...

    async def close(self) -> None: ...


class VolumeStore(Protocol):
    """Volume records and which VM mounts which volume (volant.store.volumes)."""

    async def create_volume(self, name: str, size: int) -> Volume:
        """Record a new, unformatted volume; NameTaken when one of that name exists."""
        ...

    async def get_volume(self, name: str) -> Volume:
        """The volume with its attachments; NotFound when there is none."""
        ...

    async def volume_exists(self, name: str) -> bool: ...

    async def list_volumes(self) -> list[Volume]: ...

    async def update_volume(
        self, name: str, *, size_bytes: int | None = None, formatted: bool | None = None
    ) -> Volume: ...

    async def delete_volume(self, name: str) -> None:
        """Delete the record; Conflict while any VM has the volume attached."""
        ...

    async def vm_volumes(self, vm: str) -> list[VolumeMount]:
        """The volumes attached to a VM (recorded with the VM at create)."""
        ...

    async def vm_state(self, vm: str) -> tuple[str, datetime] | None:
        """(status, updated_at) of a VM; None when it is gone."""
        ...


class VolumeFiles(Protocol):
    """Volume files on the host (volant.storage.volumes): sparse, ext4, grown offline."""

    def path(self, name: str) -> Path: ...

    async def create(self, name: str, size: int) -> None:
        """A new sparse file; FileExistsError when there is one already."""
        ...

    async def remove(self, name: str) -> None: ...

    async def grow(self, name: str, size: int) -> None: ...

    async def format(self, name: str) -> None:
        """mkfs.ext4 on the file."""
        ...

    async def grow_fs(self, name: str) -> None:
        """Check the file system, then grow it to the file's size."""
        ...

    async def stat(self, name: str) -> tuple[int, int] | None:
        """(size, bytes allocated on the host); None when the file is missing."""
        ...

    async def scan(self) -> dict[str, str]:
        """Every file in the volumes directory: path -> volume name."""
        ...


class Hypervisor(Protocol):
    """One VM's hypervisor, as a launcher sees it (its sockets live in spec.run_dir)."""

    kind: str

    def command(self) -> list[str]: ...

    async def wait_ready(self, timeout: float) -> None:
        """Return once the hypervisor answers on its API socket; raise HypervisorFailed."""
        ...

    async def shutdown(self, *, graceful: bool, timeout: float) -> bool:
        """Ask the hypervisor to end; True when it went away within timeout."""
        ...

    async def follow(self) -> None:
        """Listen to the hypervisor's own events for as long as it runs (a task the engine owns
        from launch or adoption on); returns once the hypervisor is gone."""
        ...

    async def end_cause(self, timeout: float) -> HypervisorEnd:
        """Why the hypervisor ended, by its own events; call after it has exited. Waits up to
        timeout for events still in flight. UNKNOWN when it said nothing (killed, crashed) or
        nothing was listening."""
        ...

    async def info(self) -> dict[str, Any]: ...


class HypervisorDriver(Protocol):
    kind: str

    def kernel_extras(self) -> list[str]:
        """Kernel arguments this hypervisor needs (entropy, clock hints) on every guest."""
        ...

    def agent_channel(self, cid: int) -> AgentChannel:
        """How the host reaches the agent of a network-less VM with vsock context id cid."""
        ...

    def for_vm(self, spec: LaunchSpec) -> Hypervisor: ...


class Supervisor(Protocol):
    """Runs hypervisor processes: in transient systemd scopes, or as plain children."""

    kind: str

    async def launch(
        self, name: str, argv: Sequence[str], limits: ScopeLimits, *, log_path: Path
    ) -> Launched:
        """Start argv so that it never executes outside its scope; return pid and unit."""
        ...

    async def kill(self, name: str) -> None:
        """Kill every process of the VM's scope (or its child) and wait for it to end."""
        ...

    async def adopt(self, name: str, pid: int, unit: str) -> bool:
        """Watch a hypervisor started by an earlier daemon; False when it is gone."""
        ...

    def set_exit_callback(self, callback: ExitCallback) -> None: ...

    async def scan(self) -> dict[str, str]:
        """Every live hypervisor holder on the host, whoever started it: VM name -> unit name
        (systemd: active scopes in volant.slice) or pid (without systemd: processes that carry
        a VM's name in their environment)."""
        ...

    async def usage(self, name: str) -> Usage:
        """CPU time and memory of the VM's hypervisor; fields are None where unknown."""
        ...

    async def host_shutting_down(self) -> bool:
        """True while the host itself is shutting down (not just volantd stopping)."""
        ...

    async def close(self) -> None: ...


class Machines(Protocol):
    """A registry of VMs for host tools (systemd-machined); every call is best-effort."""

    async def register(self, name: str, pid: int, interface: str | None) -> None: ...

    async def unregister(self, name: str) -> None: ...

    async def registered(self) -> list[str]:
        """Names of the machines registered by Volant (service "volant")."""
        ...


class Network(Protocol):
    async def ensure_bridge(self) -> None: ...

    def tap_name(self, vm_name: str) -> str: ...

    async def create_tap(self, tap: str, vm_name: str, *, isolated: bool = False) -> None:
        """Create (or reuse) the tap on the bridge; an isolated one forwards to no other
        guest's tap."""
        ...

    async def delete_tap(self, tap: str) -> None: ...

    async def tap_exists(self, tap: str) -> bool: ...

    async def list_taps(self) -> dict[str, str]:
        """Every tap with Volant's prefix: its name -> the VM name in its alias ("" if none)."""
        ...


class Helpers(Protocol):
    """Long-running helper daemons that outlive volantd (its dnsmasq), found again by name:
    transient systemd services, or children tagged in their environment (volant.host.helpers)."""

    kind: str

    async def start(self, name: str, argv: Sequence[str], *, log_path: Path) -> None:
        """Start argv as helper name (Unavailable when it cannot start)."""
        ...

    async def running(self, name: str) -> bool: ...

    async def signal(self, name: str, signum: int) -> bool:
        """Send signum to the helper; False when it is not running."""
        ...

    async def stop(self, name: str) -> None:
        """End it (SIGTERM, then SIGKILL) and return once it is gone."""
        ...

    async def close(self) -> None: ...


class Artifacts(Protocol):
    """Plugin boot artifacts, verified against their sha256 and cached by digest."""

    async def ensure(self, artifact: Artifact, *, base: str = "", field: str = "initramfs") -> Path:
        """The cached, verified copy; fetched or copied (relative to base) on first use."""
        ...

    async def concatenated(self, first: Path, second: Path) -> Path:
        """An initramfs that is first followed by second (cached)."""
        ...

    async def prune(self, keep: set[str]) -> int:
        """Remove cached artifacts whose checksum is not in keep, every combined file and
        whatever a killed daemon left half-written; how many cached files went."""
        ...


class DiskSpaceLike(Protocol):
    @property
    def size_bytes(self) -> int: ...

    @property
    def allocated_bytes(self) -> int: ...


class Disks(Protocol):
    """VM disk files on the host (volant.storage.disks) and rootfs image checks."""

    async def make(self, path: Path, size_bytes: int, label: str) -> None:
        """A sparse ext4 file system of size_bytes at path, made whole or not at all."""
        ...

    async def remove(self, path: Path) -> None: ...

    async def space(self, path: Path) -> DiskSpaceLike | None:
        """Size and allocated bytes of the disk file; None when there is none."""
        ...

    async def scan(self, root: Path) -> dict[str, str]:
        """Disk files under root (partial ones too): path -> VM name."""
        ...

    async def check_rootfs(self, path: Path, fmt: str) -> None:
        """InvalidArgument (field rootfs) unless path holds a whole file system of fmt."""
        ...
