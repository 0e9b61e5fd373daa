"""The per-VM D-Bus objects, and the registry that keeps VM and plugin objects in step."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from sdbus import (
    DbusObjectManagerInterfaceAsync,
    SdBus,
    dbus_method_async_override,
    dbus_property_async_override,
)
from sdbus.dbus_proxy_async_interface_base import DbusInterfaceBaseAsync
from sdbus.dbus_proxy_async_object_manager import DbusObjectManagerExportHandle

from volant.model import Usage, VirtualMachine

from .codec import vm_path
from .interfaces import VM_INTERFACE, VMInterface

log = logging.getLogger(__name__)

UNSET = 2**64 - 1
"""systemd's "[not set]" for a uint64 resource property."""

T = TypeVar("T")
PropertyTable = dict[str, tuple[str, Callable[[T], Any]]]

# D-Bus property name -> (signature, value from the stored VM); the order is the XML's order.
PROPERTIES: PropertyTable[VirtualMachine] = {
    "Name": ("s", lambda vm: vm.name),
    "Status": ("s", lambda vm: vm.status.value),
    "StatusReason": ("s", lambda vm: vm.status_reason),
    "IPAddress": ("s", lambda vm: vm.ip_address or ""),
    "MAC": ("s", lambda vm: vm.mac),
    "PID": ("u", lambda vm: vm.pid or 0),
    "Unit": ("s", lambda vm: vm.unit),
    "CPUs": ("u", lambda vm: vm.cpu_cores),
    "MemoryMB": ("u", lambda vm: vm.memory_mb),
    "Plugin": ("s", lambda vm: vm.plugin),
}


def changed_properties(table: PropertyTable[T], old: T, new: T) -> dict[str, tuple[str, Any]]:
    """The properties whose values differ between two stored states, for PropertiesChanged."""
    return {prop: (sig, get(new)) for prop, (sig, get) in table.items() if get(new) != get(old)}


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
        changed = changed_properties(PROPERTIES, self._vm, vm)
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
    def status_reason(self) -> str:
        return self._vm.status_reason

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


class Named(Protocol):
    """A stored item with a unique name: a VM or a plugin."""

    @property
    def name(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Named)
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)


class Updatable(Protocol[ItemT_contra]):
    """An exported object (a D-Bus interface) that takes newer stored states of its item."""

    def update(self, item: ItemT_contra, /) -> None: ...


ObjT = TypeVar("ObjT", bound=Updatable[Any])


class Objects(Generic[ItemT, ObjT]):
    """One exported object per stored item, under the manager's ObjectManager.

    `generation` counts changes, so a refresh that read the store before one can tell that
    its snapshot is stale.
    """

    def __init__(
        self,
        bus: SdBus,
        manager: DbusObjectManagerInterfaceAsync,
        make: Callable[[ItemT], ObjT],
        path: Callable[[str], str],
    ) -> None:
        self._bus = bus
        self._manager = manager
        self._make = make
        self._path = path
        self._exported: dict[str, tuple[ObjT, DbusObjectManagerExportHandle]] = {}
        self.generation = 0

    def upsert(self, item: ItemT) -> str:
        """Export the item's object, or update it; returns its path."""
        self.generation += 1
        path = self._path(item.name)
        current = self._exported.get(item.name)
        if current is not None:
            current[0].update(item)
            return path
        obj = self._make(item)
        # Every ObjT is a D-Bus interface too; a TypeVar cannot say "class and protocol".
        handle = self._manager.export_with_manager(
            path, cast(DbusInterfaceBaseAsync, obj), self._bus
        )
        self._exported[item.name] = (obj, handle)
        log.debug("exported %s", path)
        return path

    def objects(self) -> list[ObjT]:
        return [obj for obj, _handle in self._exported.values()]

    def remove(self, name: str) -> None:
        self.generation += 1
        current = self._exported.pop(name, None)
        if current is not None:
            current[1].stop()

    def replace_all(self, items: list[ItemT]) -> None:
        """Make the exported set exactly `items` (at start, and after missing changes)."""
        wanted = {item.name for item in items}
        for name in set(self._exported) - wanted:
            self.remove(name)
        for item in items:
            self.upsert(item)

    def close(self) -> None:
        for name in list(self._exported):
            self.remove(name)


def vm_objects(
    bus: SdBus, manager: DbusObjectManagerInterfaceAsync, verbs: VerbTarget
) -> Objects[VirtualMachine, VMObject]:
    return Objects(bus, manager, lambda vm: VMObject(verbs, vm), vm_path)
