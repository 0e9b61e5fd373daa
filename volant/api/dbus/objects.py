"""The per-VM D-Bus objects and the registry that keeps them in step with the store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sdbus import (
    DbusObjectManagerInterfaceAsync,
    SdBus,
    dbus_method_async_override,
    dbus_property_async_override,
)
from sdbus.dbus_proxy_async_object_manager import DbusObjectManagerExportHandle

from volant.model import Usage, VirtualMachine

from .codec import vm_path
from .interfaces import VM_INTERFACE, VMInterface

log = logging.getLogger(__name__)

UNSET = 2**64 - 1
"""systemd's "[not set]" for a uint64 resource property."""

# D-Bus property name -> (signature, value from the stored VM); the order is the XML's order.
PROPERTIES: dict[str, tuple[str, Callable[[VirtualMachine], Any]]] = {
    "Name": ("s", lambda vm: vm.name),
    "Status": ("s", lambda vm: vm.status.value),
    "IPAddress": ("s", lambda vm: vm.ip_address or ""),
    "MAC": ("s", lambda vm: vm.mac),
    "PID": ("u", lambda vm: vm.pid or 0),
    "Unit": ("s", lambda vm: vm.unit),
    "CPUs": ("u", lambda vm: vm.cpu_cores),
    "MemoryMB": ("u", lambda vm: vm.memory_mb),
    "Plugin": ("s", lambda vm: vm.plugin),
}


class VerbTarget(Protocol):
    """What a VM object's methods call: the manager's verbs, by VM name."""

    def start_vm(self, name: str) -> Awaitable[Any]: ...
    def stop_vm(self, name: str) -> Awaitable[Any]: ...
    def restart_vm(self, name: str) -> Awaitable[Any]: ...
    def destroy_vm(self, name: str) -> Awaitable[None]: ...


class VMObject(VMInterface):
    """`/com/volantvm/Volant1/vm/<name>`: properties from the last stored state of the VM."""

    def __init__(self, manager: VerbTarget, vm: VirtualMachine) -> None:
        super().__init__()
        self._manager = manager
        self._vm = vm
        self._usage = Usage()

    @property
    def vm(self) -> VirtualMachine:
        return self._vm

    def set_usage(self, usage: Usage) -> None:
        """Take the latest usage read from the VM's scope (or process)."""
        self._usage = usage

    def update(self, vm: VirtualMachine) -> None:
        """Take a newer stored state; announce the properties that changed."""
        changed = {
            prop: (sig, get(vm))
            for prop, (sig, get) in PROPERTIES.items()
            if get(vm) != get(self._vm)
        }
        self._vm = vm
        if changed:
            self.properties_changed.emit((VM_INTERFACE, changed, []))

    @dbus_property_async_override()
    def name(self) -> str:
        return self._vm.name

    @dbus_property_async_override()
    def status(self) -> str:
        return self._vm.status.value

    @dbus_property_async_override()
    def ip_address(self) -> str:
        return self._vm.ip_address or ""

    @dbus_property_async_override()
    def mac(self) -> str:
        return self._vm.mac

    @dbus_property_async_override()
    def pid(self) -> int:
        return self._vm.pid or 0

    @dbus_property_async_override()
    def unit(self) -> str:
        return self._vm.unit

    @dbus_property_async_override()
    def cpus(self) -> int:
        return self._vm.cpu_cores

    @dbus_property_async_override()
    def memory_mb(self) -> int:
        return self._vm.memory_mb

    @dbus_property_async_override()
    def plugin(self) -> str:
        return self._vm.plugin

    @dbus_property_async_override()
    def cpu_usage_nsec(self) -> int:
        cpu = self._usage.cpu_seconds
        return UNSET if cpu is None else round(cpu * 1e9)

    @dbus_property_async_override()
    def memory_current(self) -> int:
        memory = self._usage.memory_bytes
        return UNSET if memory is None else memory

    @dbus_method_async_override()
    async def start(self) -> None:
        await self._manager.start_vm(self._vm.name)

    @dbus_method_async_override()
    async def stop(self) -> None:
        await self._manager.stop_vm(self._vm.name)

    @dbus_method_async_override()
    async def restart(self) -> None:
        await self._manager.restart_vm(self._vm.name)

    @dbus_method_async_override()
    async def destroy(self) -> None:
        await self._manager.destroy_vm(self._vm.name)


class VMObjects:
    """One exported VMObject per stored VM, under the manager's ObjectManager."""

    def __init__(
        self, bus: SdBus, manager: DbusObjectManagerInterfaceAsync, verbs: VerbTarget
    ) -> None:
        self._bus = bus
        self._manager = manager
        self._verbs = verbs
        self._exported: dict[str, tuple[VMObject, DbusObjectManagerExportHandle]] = {}

    def upsert(self, vm: VirtualMachine) -> str:
        """Export the VM's object, or update it; returns its path."""
        path = vm_path(vm.name)
        current = self._exported.get(vm.name)
        if current is not None:
            current[0].update(vm)
            return path
        obj = VMObject(self._verbs, vm)
        handle = self._manager.export_with_manager(path, obj, self._bus)
        self._exported[vm.name] = (obj, handle)
        log.debug("exported %s", path)
        return path

    def objects(self) -> list[VMObject]:
        return [obj for obj, _handle in self._exported.values()]

    def remove(self, name: str) -> None:
        current = self._exported.pop(name, None)
        if current is not None:
            current[1].stop()

    def replace_all(self, vms: list[VirtualMachine]) -> None:
        """Make the exported set exactly `vms` (at start, and after missing events)."""
        wanted = {vm.name for vm in vms}
        for name in set(self._exported) - wanted:
            self.remove(name)
        for vm in vms:
            self.upsert(vm)

    def close(self) -> None:
        for name in list(self._exported):
            self.remove(name)
