"""Repair at start: make the host agree with the store again after volantd was killed.

The store says which VMs exist and which of them this daemon now watches (adopted). The host
is scanned on its own terms, not through the store: VM scopes (or, without systemd, hypervisor
processes carrying a VM's name), taps with Volant's prefix, machined registrations, run
directories, console logs and VM disks; the ledger's records add whatever a scan cannot
guess. What a VM needs is kept (and recorded when its record is missing); everything else is
removed. Each repair is logged and recorded as a HOST_REPAIRED event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from volant.engine.hoststeps import HostSteps
from volant.engine.ports import Store
from volant.engine.published import Published
from volant.engine.vmdisks import VMDisks
from volant.model import ResourceKind, VirtualMachine, VolantError

log = logging.getLogger("volant.engine.engine")

Key = tuple[ResourceKind, str]
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
# Removed in this order: the hypervisors first, so nothing holds a tap or a file any more.
ORDER = (
    ResourceKind.SCOPE,
    ResourceKind.MACHINE,
    ResourceKind.TAP,
    ResourceKind.RUN_DIR,
    ResourceKind.CONSOLE_LOG,
    ResourceKind.DISK,
    ResourceKind.VOLUME,
)


class VolumeSource(Protocol):
    """What repair needs of volumes (volant.engine.volumes.Volumes): the files the store
    records, and the files in the volumes directory; path -> "" (no VM owns a volume)."""

    async def wanted_files(self) -> dict[str, str]: ...

    async def found_files(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Paths:
    """Where per-VM files live: run directories, console logs and writable disks."""

    run_root: Path
    console_root: Path
    disk_root: Path

    def run_dir(self, vm: str) -> str:
        return str(self.run_root / vm)

    def console_log(self, vm: str) -> str:
        return str(self.console_root / f"{vm}.log")

    def disk(self, vm: str) -> str:
        return str(self.disk_root / f"{vm}.img")


class Repair:
    """Compares the host with the store and removes what no VM needs."""

    def __init__(
        self,
        store: Store,
        host: HostSteps,
        disks: VMDisks,
        paths: Paths,
        emit: Emit,
        volumes: VolumeSource | None = None,
        published: Published | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.disks = disks
        self.paths = paths
        self._emit = emit
        self.volumes = volumes
        self.published = published

    def wanted(self, vms: Sequence[VirtualMachine], active: Collection[str]) -> dict[Key, str]:
        """What the VMs need on the host: files (and a disk, when it has one) for every VM; a
        hypervisor, a tap and a machine for the ones whose hypervisor is watched. Key -> VM
        name. A partial disk (a make cut short) is never wanted."""
        wanted: dict[Key, str] = {}
        for vm in vms:
            wanted[(ResourceKind.RUN_DIR, self.paths.run_dir(vm.name))] = vm.name
            wanted[(ResourceKind.CONSOLE_LOG, self.paths.console_log(vm.name))] = vm.name
            wanted[(ResourceKind.DISK, self.paths.disk(vm.name))] = vm.name
            if vm.name in active:
                wanted[(ResourceKind.SCOPE, vm.name)] = vm.name
                wanted[(ResourceKind.TAP, self.host.network.tap_name(vm.name))] = vm.name
                if self.host.machines is not None:
                    wanted[(ResourceKind.MACHINE, vm.name)] = vm.name
        return wanted

    async def run(self, vms: Sequence[VirtualMachine], active: Collection[str]) -> int:
        """Repair the host; return how many resources were removed or adopted."""
        wanted = self.wanted(vms, active)
        if self.volumes is not None:
            # A volume's file is wanted while its row exists; one without a row is an orphan
            # of a create or delete that was cut short, and goes.
            files = await self.volumes.wanted_files()
            wanted |= {(ResourceKind.VOLUME, path): vm for path, vm in files.items()}
        found = await self.scan()
        # Other services' records (builds) are theirs to repair.
        listed = await self.store.list_resources()
        records = {(r.kind, r.name): r.vm for r in listed if r.kind in ORDER}
        names = {vm.name for vm in vms}
        repairs = 0
        for key in sorted(found.keys() | records.keys(), key=_removal_order):
            kind, name = key
            vm = wanted.get(key) or found.get(key) or records.get(key) or ""
            if key in wanted:
                if key not in found:
                    log.info("%s %s of VM %s is not there; forgetting its record", kind, name, vm)
                    await self.store.forget_resource(kind, name)
                elif key not in records:
                    await self.host.ledger.adopt(vm, kind, name)
                    await self._repaired(vm, kind, name, "adopted", "it had no record")
                    repairs += 1
                continue
            try:
                await self.host.ledger.remove(kind, name, self.host.destroyer(kind, name))
            except (VolantError, OSError) as exc:
                log.error("could not remove %s %s: %s", kind, name, exc, extra={"VM": vm})
                continue
            if key in found:
                reason = "VM not running" if vm in names else "no VM of that name"
                if kind is ResourceKind.VOLUME:
                    reason = "no volume of that name"
                await self._repaired(vm, kind, name, "removed", reason)
                repairs += 1
            # else only the intent was written (the kill came before the change), or the
            # resource went away by itself: the record was all that was left.
        if self.published is not None:
            # Rules are not only removed but also put back (setup's file replaces the table).
            repairs += await self.published.repair(vms, active)
        return repairs

    async def scan(self) -> dict[Key, str]:
        """What exists on the host now: Key -> the VM name it belongs to (as far as it says)."""
        found: dict[Key, str] = {}
        for kind, listing in (
            (ResourceKind.SCOPE, self._scopes),
            (ResourceKind.MACHINE, self._machines),
            (ResourceKind.TAP, self._taps),
            (ResourceKind.RUN_DIR, self._run_dirs),
            (ResourceKind.CONSOLE_LOG, self._console_logs),
            (ResourceKind.DISK, self.disks.scan),
            (ResourceKind.VOLUME, self._volume_files),
        ):
            try:
                for name, vm in (await listing()).items():
                    found[(kind, name)] = vm
            except (VolantError, OSError) as exc:
                log.warning("cannot scan the host for %ss: %s", kind, exc)
        return found

    async def _scopes(self) -> dict[str, str]:
        return {name: name for name in await self.host.supervisor.scan()}

    async def _machines(self) -> dict[str, str]:
        if self.host.machines is None:
            return {}
        return {name: name for name in await self.host.machines.registered()}

    async def _taps(self) -> dict[str, str]:
        return await self.host.network.list_taps()

    async def _run_dirs(self) -> dict[str, str]:
        return await asyncio.to_thread(_entries, self.paths.run_root, "*", dirs=True)

    async def _console_logs(self) -> dict[str, str]:
        return await asyncio.to_thread(_entries, self.paths.console_root, "*.log", dirs=False)

    async def _volume_files(self) -> dict[str, str]:
        return {} if self.volumes is None else await self.volumes.found_files()

    async def _repaired(
        self, vm: str, kind: ResourceKind, name: str, action: str, reason: str
    ) -> None:
        log.warning(
            "repair: %s %s %s of VM %s (%s)",
            action,
            kind,
            name,
            vm or "-",
            reason,
            extra={"VM": vm},
        )
        await self._emit(vm, {"kind": kind.value, "name": name, "action": action, "reason": reason})


def _removal_order(key: Key) -> tuple[int, str]:
    return ORDER.index(key[0]), key[1]


def _entries(root: Path, pattern: str, *, dirs: bool) -> dict[str, str]:
    """Files (or directories) under root matching pattern: path -> VM name (the stem)."""
    if not root.is_dir():
        return {}
    return {
        str(path): path.stem if not dirs else path.name
        for path in root.glob(pattern)
        if path.is_dir() == dirs
    }
