"""What volantd's dnsmasq learns, brought into the store, and what it answers, kept current.

Every POLL seconds: a dhcp-mode VM whose MAC has a lease in dnsmasq's lease file gets that
address on its row (`ip_address`), a LEASE record in the ledger and a VM_ADDRESS event; then
the hosts file (`<vm>.<domain>` for every VM with an address) and the dhcp-hosts file (static
addresses inside the DHCP range, reserved) are written again when they changed, and dnsmasq
re-reads them (SIGHUP). A VM's address is therefore in DNS at most POLL seconds after it is
known. Polling a small file keeps this free of inotify and of any channel from dnsmasq.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path

from volant.engine.guest import vm_manifest
from volant.engine.ledger import Ledger
from volant.engine.ports import Store
from volant.model import (
    Event,
    EventType,
    NetworkMode,
    ResourceKind,
    Unavailable,
    VirtualMachine,
    VMStatus,
    VolantError,
)
from volant.network import dnsmasq
from volant.network.dnsmasq import Lease, Plan

log = logging.getLogger("volant.engine.engine")

POLL = 1.0
Emit = Callable[..., Awaitable[Event]]
Reload = Callable[[], Awaitable[None]]


class Leases:
    """Reads the lease file, records learned addresses and writes dnsmasq's hosts files."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        plan: Plan,
        emit: Emit,
        on_address: Callable[[VirtualMachine], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self._on_address = on_address
        self.ledger = ledger
        self.plan = plan
        self._emit = emit
        # (VM name, created) -> in dhcp mode: a VM's manifest never changes.
        self._dhcp: dict[tuple[str, datetime], bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._written: dict[Path, str] = {}

    async def read(self) -> list[Lease]:
        try:
            text = await asyncio.to_thread(self.plan.lease_file.read_text)
        except OSError:
            return []
        return dnsmasq.parse_leases(text)

    def follow(self, reload: Reload, alive: Reload) -> None:
        """Poll the lease file and the VMs until close(); alive() comes first every round."""
        self._task = asyncio.create_task(self._follow(reload, alive))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _follow(self, reload: Reload, alive: Reload) -> None:
        while True:
            try:
                await alive()
                await self.sync(reload)
            except (VolantError, OSError) as exc:
                log.warning("dnsmasq leases: %s", exc)
            await asyncio.sleep(POLL)

    async def sync(self, reload: Reload) -> None:
        """One round: learn addresses from leases, then rewrite the hosts files."""
        vms = await self.store.list_vms()
        leases = {lease.mac: lease for lease in await self.read()}
        for index, vm in enumerate(vms):
            lease = leases.get(vm.mac.lower())
            if lease is not None and lease.ip != vm.ip_address and self._in_dhcp_mode(vm):
                vms[index] = await self._learn(vm, lease)
        if await self.write_files(vms):
            await reload()

    def _in_dhcp_mode(self, vm: VirtualMachine) -> bool:
        key = (vm.name, vm.created_at)
        if key not in self._dhcp:
            try:
                self._dhcp[key] = vm_manifest(vm).network is NetworkMode.DHCP
            except VolantError:
                self._dhcp[key] = False
        return self._dhcp[key]

    async def _learn(self, vm: VirtualMachine, lease: Lease) -> VirtualMachine:
        """Record the VM's address, its lease in the ledger, and a VM_ADDRESS event."""
        old = vm.ip_address
        # The row first: a VM deleted meanwhile (NotFound here) leaves no record behind.
        vm = await self.store.set_vm_address(vm.name, lease.ip)
        if old:
            await self.store.forget_resource(ResourceKind.LEASE, old)
        await self.ledger.adopt(vm.name, ResourceKind.LEASE, lease.ip)
        log.info("VM %s has address %s (DHCP)", vm.name, lease.ip, extra={"VM": vm.name})
        await self._emit(EventType.VM_ADDRESS, vm, mac=lease.mac)
        if self._on_address is not None and vm.status in (VMStatus.STARTING, VMStatus.RUNNING):
            await self._on_address(vm)  # its published ports, say
        return vm

    async def write_files(self, vms: Sequence[VirtualMachine], *, signal: bool = True) -> bool:
        """Write the hosts and dhcp-hosts files when they changed; True when one did."""
        span = dnsmasq.dhcp_range(self.plan.subnet, self.plan.host_ip)
        named = [(vm.name, vm.ip_address) for vm in vms if vm.ip_address]
        reserved = [
            (vm.mac, vm.ip_address)
            for vm in vms
            if vm.ip_address and span is not None and IPv4Address(vm.ip_address) in span
            and not self._in_dhcp_mode(vm)
        ]  # fmt: skip
        files = {
            self.plan.hosts_file: dnsmasq.hosts_text(named, self.plan.domain),
            self.plan.dhcp_hosts_file: dnsmasq.dhcp_hosts_text(reserved),
        }
        changed = False
        for path, text in files.items():
            if self._written.get(path) != text:
                await asyncio.to_thread(_write, path, text)
                self._written[path] = text
                changed = True
        return changed and signal

    async def wait_address(self, vm: VirtualMachine, timeout: float) -> VirtualMachine:
        """A dhcp-mode VM once it has an address (Unavailable when none comes within
        timeout); any other VM as it is."""
        if not self._in_dhcp_mode(vm):
            return vm
        name, deadline = vm.name, time.monotonic() + timeout
        while True:
            vm = await self.store.get_vm(name)
            if vm.ip_address:
                return vm
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"VM {name!r} got no DHCP lease within {timeout:.0f}s",
                    hint=f"see {self.plan.lease_file} and `volar vms console {name}`",
                )
            await asyncio.sleep(POLL / 4)

    def forget(self, name: str) -> None:
        for key in [key for key in self._dhcp if key[0] == name]:
            del self._dhcp[key]


def _write(path: Path, text: str) -> None:
    """Replace path whole (dnsmasq may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
