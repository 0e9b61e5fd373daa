"""HostSteps: every change the engine makes on the host for a VM, each recorded in the ledger.

The verbs (engine.py) decide when; this object knows how: tap, run directory and console log,
the hypervisor's scope, the machined registration, and their removal. Removal is by name, not
by what this daemon remembers, so it also ends what an earlier, killed daemon left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from volant.engine.ledger import HostChange, Ledger
from volant.engine.ports import Machines, Network, Supervisor
from volant.engine.published import Published
from volant.model import (
    InsufficientStorage,
    Launched,
    LaunchSpec,
    ResourceKind,
    ScopeLimits,
    VirtualMachine,
    disk_full_as_error,
)
from volant.runtime.agentlink import hypervisor_sockets
from volant.runtime.configdisk import storage_document, write_config_disk

# The hypervisor's pid file and log need this much in its run directory.
RUN_DIR_MIN_FREE = 64 * 1024


class HostSteps:
    """Makes and removes a VM's host resources, recorded before and after each change."""

    def __init__(
        self,
        ledger: Ledger,
        supervisor: Supervisor,
        network: Network,
        machines: Machines | None,
        published: Published | None = None,
    ) -> None:
        self.ledger = ledger
        self.supervisor = supervisor
        self.network = network
        self.machines = machines
        self.published = published

    async def plumb_tap(self, name: str, tap: str, *, isolated: bool = False) -> None:
        """Create the VM's tap on the bridge (an isolated port for an isolated VM)."""
        await self.ledger.make(
            name,
            ResourceKind.TAP,
            tap,
            lambda: self.network.create_tap(tap, name, isolated=isolated),
            lambda: self.network.delete_tap(tap),
        )

    async def prepare_files(self, vm: VirtualMachine, spec: LaunchSpec) -> None:
        """The run directory (sockets, config disk with the manifest and the agent secret,
        logs) and the console log's directory; the console log itself is recorded now and
        appears with the hypervisor."""
        store = self.ledger.store
        await store.intend_resource(ResourceKind.RUN_DIR, str(spec.run_dir), vm.name)
        await store.intend_resource(ResourceKind.CONSOLE_LOG, str(spec.console_log), vm.name)
        with disk_full_as_error(spec.run_dir, f"cannot write the files of VM {vm.name}"):
            await asyncio.to_thread(_prepare_dirs, spec)
            document = json.loads(vm.manifest_json) if vm.manifest_json else None
            if spec.config_disk is not None:
                await asyncio.to_thread(
                    write_config_disk,
                    spec.config_disk,
                    document,
                    vm.agent_secret,
                    storage_document(spec),
                )
        await store.resource_made(ResourceKind.RUN_DIR, str(spec.run_dir))

    async def launch(self, vm: VirtualMachine, argv: Sequence[str], spec: LaunchSpec) -> Launched:
        """Start the hypervisor in its scope (killed again if the launch fails half-way)."""
        launched: list[Launched] = []

        async def launch() -> None:
            launched.append(
                await self.supervisor.launch(
                    vm.name,
                    argv,
                    ScopeLimits(cpus=vm.cpu_cores, memory_mb=vm.memory_mb),
                    log_path=spec.run_dir / "hypervisor.log",
                )
            )
            # Inside the scope's make: when this record cannot be written, the scope ends too.
            await self.ledger.store.resource_made(ResourceKind.CONSOLE_LOG, str(spec.console_log))

        await self.ledger.make(
            vm.name, ResourceKind.SCOPE, vm.name, launch, lambda: self.supervisor.kill(vm.name)
        )
        return launched[0]

    async def register_machine(self, name: str, pid: int, tap: str | None) -> None:
        """Register the VM with systemd-machined, when it is there."""
        machines = self.machines
        if machines is not None:
            await self.ledger.make(
                name,
                ResourceKind.MACHINE,
                name,
                lambda: machines.register(name, pid, tap),
                lambda: machines.unregister(name),
            )

    async def end_scope(self, name: str) -> None:
        """End the VM's hypervisor scope by its unit name, whether or not this daemon watches
        it (a killed daemon may have left one behind), whatever pid the VM's row holds."""
        await self.ledger.remove(ResourceKind.SCOPE, name, lambda: self.supervisor.kill(name))

    async def unplumb(self, name: str) -> None:
        """Remove what a VM's run leaves on the host: its hypervisor's scope, its published
        ports, its machine and its tap."""
        await self.end_scope(name)
        if self.published is not None:
            await self.published.close(name)
        await self.unregister_machine(name)
        await self.unplumb_tap(name)

    async def unregister_machine(self, name: str) -> None:
        """Remove the VM's machined registration, when machined is there."""
        machines = self.machines
        if machines is not None:
            await self.ledger.remove(ResourceKind.MACHINE, name, lambda: machines.unregister(name))

    async def unplumb_tap(self, name: str) -> None:
        tap = self.network.tap_name(name)
        await self.ledger.remove(ResourceKind.TAP, tap, lambda: self.network.delete_tap(tap))

    async def remove_files(self, run_dir: Path, console_log: Path) -> None:
        """Remove the VM's run directory and console log (when it is deleted)."""
        await self.ledger.remove(ResourceKind.RUN_DIR, str(run_dir), _rmtree(run_dir))
        await self.ledger.remove(ResourceKind.CONSOLE_LOG, str(console_log), _unlink(console_log))

    def destroyer(self, kind: ResourceKind, name: str) -> HostChange:
        """How to remove a recorded or scanned resource of kind called name."""
        if kind is ResourceKind.SCOPE:
            return lambda: self.supervisor.kill(name)
        if kind is ResourceKind.TAP:
            return lambda: self.network.delete_tap(name)
        if kind is ResourceKind.MACHINE:
            machines = self.machines
            return (lambda: machines.unregister(name)) if machines else _nothing
        if kind is ResourceKind.RUN_DIR:
            return _rmtree(Path(name))
        return _unlink(Path(name))


def _rmtree(path: Path) -> HostChange:
    return lambda: asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)


def _unlink(path: Path) -> HostChange:
    return lambda: asyncio.to_thread(path.unlink, missing_ok=True)


async def _nothing() -> None:
    return None


def _prepare_dirs(spec: LaunchSpec) -> None:
    spec.run_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    spec.console_log.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    for stale in (spec.api_socket, spec.serial_socket, *hypervisor_sockets(spec)):
        stale.unlink(missing_ok=True)
    # The hypervisor writes its pid file and log here, and exits without a word it could
    # leave when it cannot: say why before it starts.
    st = os.statvfs(spec.run_dir)
    if st.f_bavail * st.f_frsize < RUN_DIR_MIN_FREE:
        raise InsufficientStorage.at(
            spec.run_dir,
            f"no room for the hypervisor's files of VM {spec.name}",
            f"less than {RUN_DIR_MIN_FREE // 1024} KiB free",
        )
