"""The part of systemd's D-Bus API that Volant uses, declared once, and a client around it.

`SystemdClient` owns one system-bus connection: it subscribes to the manager's signals and
installs its match rules before it makes any call whose outcome those signals report, so no
JobRemoved or UnitRemoved can slip by between a call and the wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from sdbus import (
    DbusFailedError,
    DbusInterfaceCommonAsync,
    DbusUnknownMethodError,
    DbusUnknownObjectError,
    SdBus,
    SdBusBaseError,
    dbus_method_async,
    dbus_property_async,
    dbus_signal_async,
    sd_bus_open_system,
)
from sdbus.sd_bus_internals import SdBusMessage, SdBusSlot

log = logging.getLogger(__name__)

SYSTEMD_SERVICE = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
ENDED_STATES = frozenset({"inactive", "failed"})
UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
# systemd reads an unset (or unaccounted) uint64 property as UINT64_MAX.
UNSET = 2**64 - 1

Properties = list[tuple[str, tuple[str, Any]]]


class NoSuchUnitError(DbusFailedError):
    dbus_error_name = "org.freedesktop.systemd1.NoSuchUnit"


class NoUnitForPidError(DbusFailedError):
    dbus_error_name = "org.freedesktop.systemd1.NoUnitForPID"


class UnitExistsError(DbusFailedError):
    dbus_error_name = "org.freedesktop.systemd1.UnitExists"


_GONE = (NoSuchUnitError, DbusUnknownObjectError, DbusUnknownMethodError)


class SystemdManager(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Manager"):
    """org.freedesktop.systemd1.Manager, the members Volant calls."""

    @dbus_method_async("ssa(sv)a(sa(sv))", "o", method_name="StartTransientUnit")
    async def start_transient_unit(
        self, name: str, mode: str, properties: Properties, aux: list[tuple[str, Properties]]
    ) -> str:
        raise NotImplementedError

    @dbus_method_async("s", "o", method_name="GetUnit")
    async def get_unit(self, name: str) -> str:
        raise NotImplementedError

    @dbus_method_async("u", "o", method_name="GetUnitByPID")
    async def get_unit_by_pid(self, pid: int) -> str:
        raise NotImplementedError

    @dbus_method_async("asas", "a(ssssssouso)", method_name="ListUnitsByPatterns")
    async def list_units_by_patterns(
        self, states: list[str], patterns: list[str]
    ) -> list[tuple[str, str, str, str, str, str, str, int, str, str]]:
        raise NotImplementedError

    @dbus_method_async("ssi", method_name="KillUnit")
    async def kill_unit(self, name: str, whom: str, signal: int) -> None:
        raise NotImplementedError

    @dbus_method_async(method_name="Subscribe")
    async def subscribe(self) -> None:
        raise NotImplementedError

    @dbus_method_async(method_name="Unsubscribe")
    async def unsubscribe(self) -> None:
        raise NotImplementedError

    @dbus_property_async("s", property_name="SystemState")
    def system_state(self) -> str:
        raise NotImplementedError

    @dbus_signal_async("uoss", signal_name="JobRemoved")
    def job_removed(self) -> tuple[int, str, str, str]:
        raise NotImplementedError

    @dbus_signal_async("so", signal_name="UnitRemoved")
    def unit_removed(self) -> tuple[str, str]:
        raise NotImplementedError


class SystemdUnit(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Unit"):
    """org.freedesktop.systemd1.Unit, the properties Volant reads."""

    @dbus_property_async("s", property_name="Id")
    def id(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", property_name="ActiveState")
    def active_state(self) -> str:
        raise NotImplementedError


class SystemdScope(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Scope"):
    """org.freedesktop.systemd1.Scope, the accounting properties Volant reads."""

    @dbus_property_async("t", property_name="CPUUsageNSec")
    def cpu_usage_nsec(self) -> int:
        raise NotImplementedError

    @dbus_property_async("t", property_name="MemoryCurrent")
    def memory_current(self) -> int:
        raise NotImplementedError


def _active_state(message: SdBusMessage) -> str | None:
    """The ActiveState a Unit PropertiesChanged signal carries, if it carries one."""
    interface, changed, _invalidated = cast(
        tuple[str, dict[str, tuple[str, Any]], list[str]], message.get_contents()
    )
    if interface != UNIT_INTERFACE or "ActiveState" not in changed:
        return None
    return str(changed["ActiveState"][1])


class SystemdClient:
    """A system-bus connection to systemd, subscribed to its signals; use `async with`."""

    def __init__(self) -> None:
        self._bus: SdBus | None = None
        self._manager: SystemdManager | None = None
        self._slots: list[SdBusSlot] = []
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._early_jobs: dict[str, str] = {}
        self._starting = 0
        self._pokes: dict[str, set[asyncio.Event]] = {}

    @property
    def manager(self) -> SystemdManager:
        assert self._manager is not None, "SystemdClient used outside `async with`"
        return self._manager

    @property
    def bus(self) -> SdBus:
        assert self._bus is not None, "SystemdClient used outside `async with`"
        return self._bus

    async def __aenter__(self) -> SystemdClient:
        self._bus = sd_bus_open_system()
        self._manager = SystemdManager.new_proxy(SYSTEMD_SERVICE, MANAGER_PATH, self._bus)
        try:
            await self._match(MANAGER_PATH, SystemdManager.job_removed, self._on_job_removed)
            await self._match(MANAGER_PATH, SystemdManager.unit_removed, self._on_unit_removed)
            await self.manager.subscribe()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the match rules and the subscription, and close the connection."""
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        if self._bus is not None and self._manager is not None:
            with contextlib.suppress(SdBusBaseError, TimeoutError):
                await asyncio.wait_for(self._manager.unsubscribe(), 2.0)
        if self._bus is not None:
            self._bus.close()
        self._bus = self._manager = None
        for waiter in self._job_waiters.values():
            waiter.cancel()

    async def _match(
        self, path: str | None, member: Any, callback: Callable[[SdBusMessage], None]
    ) -> SdBusSlot:
        slot = await self.bus.match_signal_async(
            SYSTEMD_SERVICE, path, member.interface_name, member.signal_name, callback
        )
        self._slots.append(slot)
        return slot

    def _on_job_removed(self, message: SdBusMessage) -> None:
        _id, job, _unit, result = cast(tuple[int, str, str, str], message.get_contents())
        waiter = self._job_waiters.pop(job, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        elif self._starting:
            # The signal may be dispatched before the reply that names the job is returned.
            self._early_jobs[job] = result

    def _on_unit_removed(self, message: SdBusMessage) -> None:
        unit, _path = cast(tuple[str, str], message.get_contents())
        self._poke(unit)

    def _poke(self, unit: str) -> None:
        for event in self._pokes.get(unit, ()):
            event.set()

    async def start_transient_unit(self, unit: str, properties: Properties, timeout: float) -> str:
        """Start a transient unit (mode "fail") and wait for its job; return the job result."""
        self._starting += 1
        try:
            job = await self.manager.start_transient_unit(unit, "fail", properties, [])
            if job in self._early_jobs:
                return self._early_jobs.pop(job)
            waiter = asyncio.get_running_loop().create_future()
            self._job_waiters[job] = waiter
            try:
                return await asyncio.wait_for(waiter, timeout)
            finally:
                self._job_waiters.pop(job, None)
        finally:
            self._starting -= 1
            if not self._starting:
                self._early_jobs.clear()

    async def unit_state(self, unit: str) -> str:
        """The unit's ActiveState, or "gone" when systemd no longer knows it."""
        try:
            path = await self.manager.get_unit(unit)
            return await SystemdUnit.new_proxy(SYSTEMD_SERVICE, path, self.bus).active_state
        except _GONE:
            return "gone"

    async def system_state(self) -> str:
        """The manager's SystemState: running, degraded, stopping (shutting down), ..."""
        return await self.manager.system_state

    async def scope_usage(self, unit: str) -> tuple[int | None, int | None]:
        """(CPUUsageNSec, MemoryCurrent) of a scope; None where unset or unaccounted."""
        try:
            path = await self.manager.get_unit(unit)
        except _GONE:
            return None, None
        scope = SystemdScope.new_proxy(SYSTEMD_SERVICE, path, self.bus)
        cpu = await scope.cpu_usage_nsec
        memory = await scope.memory_current
        return (None if cpu == UNSET else cpu), (None if memory == UNSET else memory)

    async def units_matching(self, pattern: str) -> dict[str, str]:
        """Loaded units whose name matches the glob pattern: name -> ActiveState."""
        units = await self.manager.list_units_by_patterns([], [pattern])
        return {unit[0]: unit[3] for unit in units}

    async def unit_of_pid(self, pid: int) -> str | None:
        """The name of the unit whose cgroup holds pid, or None."""
        try:
            path = await self.manager.get_unit_by_pid(pid)
            return await SystemdUnit.new_proxy(SYSTEMD_SERVICE, path, self.bus).id
        except (NoUnitForPidError, *_GONE):
            return None

    async def kill_unit(self, unit: str, signum: int = signal.SIGKILL) -> bool:
        """Send signum to every process of the unit; False when the unit does not exist."""
        try:
            await self.manager.kill_unit(unit, "all", signum)
        except _GONE:
            return False
        return True

    @contextlib.asynccontextmanager
    async def watching(
        self, unit: str, poke: asyncio.Event, states: set[str] | None = None
    ) -> AsyncIterator[None]:
        """While inside, set poke whenever systemd reports a change of unit or its removal.

        Every ActiveState the signals carry is added to states (a transient "deactivating"
        may be over before the caller reads the state). The match rules are in place on
        entry: read the unit's state after entering.
        """

        def changed(message: SdBusMessage) -> None:
            state = _active_state(message)
            if state is not None and states is not None:
                states.add(state)
            poke.set()

        self._pokes.setdefault(unit, set()).add(poke)
        slot: SdBusSlot | None = None
        try:
            try:
                path = await self.manager.get_unit(unit)
                slot = await self.bus.match_signal_async(
                    SYSTEMD_SERVICE,
                    path,
                    PROPERTIES_INTERFACE,
                    "PropertiesChanged",
                    changed,
                )
            except _GONE:
                pass  # UnitRemoved already happened or will; the caller reads the state next
            except SdBusBaseError as exc:
                log.warning("cannot watch %s (falling back to polling): %s", unit, exc)
            yield
        finally:
            if slot is not None:
                slot.close()
            pokes = self._pokes.get(unit, set())
            pokes.discard(poke)
            if not pokes:
                self._pokes.pop(unit, None)
