"""systemd-machined registration: VMs show in `machinectl list` as class vm, service volant.

Best-effort by design: machined is optional (absent in containers and minimal hosts), so every
failure is logged and swallowed; a VM never fails to start because machined said no. The
machine is tied to the hypervisor's scope (machined looks up the leader's unit), so it also
goes away with the scope when volantd is not there to terminate it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from types import TracebackType

from sdbus import (
    DbusInterfaceCommonAsync,
    SdBus,
    SdBusBaseError,
    dbus_method_async,
    sd_bus_open_system,
)

log = logging.getLogger(__name__)

MACHINED_SERVICE = "org.freedesktop.machine1"
MACHINED_PATH = "/org/freedesktop/machine1"
SERVICE = "volant"
CLASS = "vm"


class MachinedManager(DbusInterfaceCommonAsync, interface_name="org.freedesktop.machine1.Manager"):
    """org.freedesktop.machine1.Manager, the members Volant calls."""

    @dbus_method_async("sayssusai", method_name="RegisterMachineWithNetwork")
    async def register_machine_with_network(
        self,
        name: str,
        id: bytes,
        service: str,
        class_: str,
        leader: int,
        root_directory: str,
        ifindices: list[int],
    ) -> str:
        raise NotImplementedError

    @dbus_method_async(result_signature="a(ssso)", method_name="ListMachines")
    async def list_machines(self) -> list[tuple[str, str, str, str]]:
        raise NotImplementedError

    @dbus_method_async("s", method_name="TerminateMachine")
    async def terminate_machine(self, name: str) -> None:
        raise NotImplementedError


class MachineRegistry:
    """Registers VMs with systemd-machined when it is on the system bus; use `async with`."""

    def __init__(self) -> None:
        self._bus: SdBus | None = None
        self._manager: MachinedManager | None = None

    async def __aenter__(self) -> MachineRegistry:
        await self.open()
        return self

    async def open(self) -> None:
        """Connect to the system bus (no call yet: machined is bus-activated on first use)."""
        try:
            bus = sd_bus_open_system()
        except (SdBusBaseError, OSError) as exc:
            log.info("machined registration off: no system bus (%s)", exc)
            return
        self._bus = bus
        self._manager = MachinedManager.new_proxy(MACHINED_SERVICE, MACHINED_PATH, bus)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the bus; registered machines stay (they end with their scopes)."""
        if self._bus is not None:
            self._bus.close()
        self._bus = self._manager = None

    async def register(self, name: str, pid: int, interface: str | None) -> None:
        """Register VM name with leader pid and the tap's ifindex; log, never raise."""
        if self._manager is None:
            return
        ifindices = []
        if interface:
            with contextlib.suppress(OSError):
                ifindices.append(socket.if_nametoindex(interface))
        try:
            await self._manager.register_machine_with_network(
                name, b"", SERVICE, CLASS, pid, "", ifindices
            )
        except SdBusBaseError as exc:
            log.warning("machined did not register VM %s: %s", name, exc, extra={"VM": name})
            return
        log.info("registered VM %s with machined", name, extra={"VM": name})

    async def unregister(self, name: str) -> None:
        """Terminate the VM's machine (gone already when its scope ended); never raise."""
        if self._manager is None:
            return
        try:
            await self._manager.terminate_machine(name)
        except SdBusBaseError as exc:
            # Usually it went with its scope already (No machine '…' known).
            log.debug("machined TerminateMachine %s: %s", name, exc)

    async def registered(self) -> list[str]:
        """Names of the machines whose service is Volant's; [] when machined is not there."""
        if self._manager is None:
            return []
        try:
            machines = await self._manager.list_machines()
        except SdBusBaseError as exc:
            log.debug("machined ListMachines: %s", exc)
            return []
        return sorted(name for name, _class, service, _path in machines if service == SERVICE)
