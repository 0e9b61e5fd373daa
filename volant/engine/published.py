"""Published ports: a VM's host ports forwarded to it exactly while it runs.

The rules (volant.network.ports: nftables DNAT in table inet volant) are one host resource per
VM, `port_rules` named after it, recorded through the ledger like a tap: added once the
hypervisor answers (the VM's address is known), removed with its tap when it stops, crashes or
is deleted, and put right at start (`repair`): a VM whose hypervisor was adopted gets its rules
again (`volar setup`'s file, which volantd.service loads before it starts, replaces the whole
table), any other VM's rules go.

A host port is refused (409) when another running VM publishes it, or when a host process
listens on it; both are checked at create and at every start, and the first once more under
this service's lock just before the rules go in, so two VMs started at once cannot both take it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from volant.engine.ledger import Ledger
from volant.engine.ports import Store
from volant.model import (
    Conflict,
    PortMapping,
    ResourceKind,
    Unavailable,
    VirtualMachine,
    VolantError,
)

log = logging.getLogger("volant.engine.engine")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class PortFirewall(Protocol):
    """The host side of published ports (volant.network.ports.PortRules)."""

    async def add(self, vm: str, address: str, mappings: Iterable[PortMapping]) -> None:
        """Forward the mappings to address, replacing the VM's earlier rules."""
        ...

    async def remove(self, vm: str) -> None: ...

    async def listed(self) -> dict[str, int]:
        """VMs with rules on the host: name -> how many."""
        ...

    async def check_address(self, mapping: PortMapping, field: str = "publish") -> None:
        """InvalidArgument unless the mapping's address is this host's (or every address)."""
        ...

    async def check_free(self, mapping: PortMapping, field: str = "publish") -> None:
        """Conflict naming the host process that listens on the mapping's host port."""
        ...


class Published:
    """Checks, opens and closes VMs' published ports, each change recorded in the ledger."""

    def __init__(self, ledger: Ledger, firewall: PortFirewall | None, emit: Emit) -> None:
        self.ledger = ledger
        self.firewall = firewall
        self._emit = emit
        self._lock = asyncio.Lock()

    @property
    def store(self) -> Store:
        return self.ledger.store

    def _need(self) -> PortFirewall:
        if self.firewall is None:
            raise Unavailable("this volantd publishes no ports (it has no nftables access)")
        return self.firewall

    async def check(self, name: str, mappings: Sequence[PortMapping]) -> None:
        """Refuse host ports that are not this host's, that another active VM publishes, or
        that a host process listens on: before a create or start changes anything."""
        if not mappings:
            return
        firewall = self._need()
        for index, mapping in enumerate(mappings):
            await firewall.check_address(mapping, f"publish[{index}]")
        await self._check_vms(name, mappings)
        for index, mapping in enumerate(mappings):
            await firewall.check_free(mapping, f"publish[{index}]")

    async def _check_vms(self, name: str, mappings: Sequence[PortMapping]) -> None:
        for other in await self.store.list_vms():
            if other.name == name or not other.status.is_active:
                continue
            for index, mapping in enumerate(mappings):
                taken = next((m for m in other.publish if m.overlaps(mapping)), None)
                if taken is not None:
                    raise Conflict(
                        f"host port {mapping.host_port}/{mapping.proto} of {mapping} is "
                        f"published by VM {other.name!r} ({taken})",
                        hint=f"publish another host port, or stop VM {other.name}",
                        field=f"publish[{index}]",
                    )

    async def open(self, vm: VirtualMachine) -> None:
        """Add the VM's rules (none to add: nothing happens); a VM without an address yet
        (dhcp) gets them once its address is known."""
        if not vm.publish:
            return
        if vm.ip_address is None:
            log.info("VM %s has no address yet; its ports are published later", vm.name)
            return
        firewall, address = self._need(), vm.ip_address
        async with self._lock:
            await self._check_vms(vm.name, vm.publish)
            await self.ledger.make(
                vm.name,
                ResourceKind.PORT_RULES,
                vm.name,
                lambda: firewall.add(vm.name, address, vm.publish),
                lambda: firewall.remove(vm.name),
            )
        log.info(
            "VM %s publishes %s",
            vm.name,
            ", ".join(map(str, vm.publish)),
            extra={"VM": vm.name},
        )

    async def close(self, name: str) -> None:
        """Remove the VM's rules."""
        firewall = self.firewall
        if firewall is None:
            return
        # The intent is recorded before any rule goes in: no record, no rules (and no nft run
        # at every stop of a VM that publishes nothing).
        if not any(
            r.kind is ResourceKind.PORT_RULES for r in await self.store.list_resources(name)
        ):
            return
        await self.ledger.remove(ResourceKind.PORT_RULES, name, lambda: firewall.remove(name))

    async def repair(self, vms: Sequence[VirtualMachine], active: Collection[str]) -> int:
        """At start: rules for every VM whose hypervisor is watched (added again when they
        are missing), none for any other VM; how many repairs that took."""
        firewall = self.firewall
        if firewall is None:
            return 0
        try:
            found = await firewall.listed()
        except VolantError as exc:
            log.warning("cannot list the published ports' rules: %s", exc)
            return 0
        records = {
            r.name for r in await self.store.list_resources() if r.kind is ResourceKind.PORT_RULES
        }
        wanted = {vm.name: vm for vm in vms if vm.name in active and vm.publish and vm.ip_address}
        repairs = 0
        for vm in wanted.values():
            try:
                await self.open(vm)
            except VolantError as exc:
                log.error("cannot publish the ports of VM %s: %s", vm.name, exc)
                continue
            if vm.name not in found:
                await self._repaired(vm.name, "restored", "VM running, rules missing")
                repairs += 1
        for name in (found.keys() | records) - wanted.keys():
            try:
                await self.close(name)
            except VolantError as exc:
                log.error("cannot remove the published ports of %s: %s", name, exc)
                continue
            if name in found:
                await self._repaired(name, "removed", "VM not running")
                repairs += 1
        return repairs

    async def _repaired(self, vm: str, action: str, reason: str) -> None:
        kind = ResourceKind.PORT_RULES
        log.warning("repair: %s %s of VM %s (%s)", action, kind, vm, reason, extra={"VM": vm})
        await self._emit(vm, {"kind": kind.value, "name": vm, "action": action, "reason": reason})
