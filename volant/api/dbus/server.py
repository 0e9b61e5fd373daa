"""The D-Bus front-end: the manager object, its VM objects, and the bus name.

Handlers are thin: authorise the caller with polkit, decode, make one engine call, encode.
A background task owned by `DbusServer` follows the engine's EventBus: each event becomes a
VMEvent signal and refreshes (or removes) the VM's object, so PropertiesChanged follows every
status change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from types import TracebackType

from sdbus import (
    DbusObjectManagerInterfaceAsync,
    SdBus,
    SdBusBaseError,
    dbus_method_async_override,
    get_current_message,
)
from sdbus.dbus_proxy_async_interface_base import DbusExportHandle

from volant.auth.polkit import Action, Authorizer, BusCaller
from volant.engine import Engine
from volant.engine.events import Subscription
from volant.model import Event, NotFound, Unavailable, Usage, VirtualMachine

from .codec import spec_from_dbus, vardict, vm_to_dbus
from .errors import dbus_errors
from .interfaces import MANAGER_PATH, SERVICE, ManagerInterface, VarDict
from .objects import VMObjects

log = logging.getLogger(__name__)

USAGE_REFRESH = 5.0
"""Seconds between reads of the VMs' usage into their CPUUsageNSec/MemoryCurrent properties."""


class ManagerObject(DbusObjectManagerInterfaceAsync, ManagerInterface):
    """`/com/volantvm/Volant1`: com.volantvm.Volant1.Manager and the ObjectManager."""

    def __init__(self, bus: SdBus, engine: Engine, authorizer: Authorizer) -> None:
        super().__init__()
        self._engine = engine
        self._authorizer = authorizer
        self.vms = VMObjects(bus, self, self)

    async def _authorize(self, action: Action) -> None:
        sender = get_current_message().sender
        await self._authorizer.check(BusCaller(sender or ""), action)

    @dbus_method_async_override()
    async def list_vms(self) -> list[VarDict]:
        with dbus_errors():
            await self._authorize(Action.READ)
            return [vm_to_dbus(vm) for vm in await self._engine.list_vms()]

    @dbus_method_async_override()
    async def get_vm(self, name: str) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.READ)
            return vm_to_dbus(await self._engine.get_vm(name))

    @dbus_method_async_override()
    async def get_vm_usage(self, name: str) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.READ)
            return vardict((await self._engine.vm_usage(name)).to_dict())

    @dbus_method_async_override()
    async def create_vm(self, spec: VarDict) -> str:
        with dbus_errors():
            await self._authorize(Action.MANAGE_VMS)
            vm = await self._engine.create_vm(spec_from_dbus(spec, self._engine.config))
            return self.vms.upsert(vm)

    @dbus_method_async_override()
    async def destroy_vm(self, name: str) -> None:
        with dbus_errors():
            await self._authorize(Action.MANAGE_VMS)
            await self._engine.delete_vm(name)
            self.vms.remove(name)

    @dbus_method_async_override()
    async def start_vm(self, name: str) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.start_vm(name))

    @dbus_method_async_override()
    async def stop_vm(self, name: str) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.stop_vm(name))

    @dbus_method_async_override()
    async def restart_vm(self, name: str) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.restart_vm(name))

    @dbus_method_async_override()
    async def list_events(self, after_id: int, limit: int) -> list[VarDict]:
        with dbus_errors():
            await self._authorize(Action.READ)
            events = await self._engine.list_events(after_id, limit or 1000)
            return [vardict(event.to_dict()) for event in events]

    @dbus_method_async_override()
    async def get_system_status(self) -> VarDict:
        with dbus_errors():
            await self._authorize(Action.READ)
            return vardict(asdict(await self._engine.system_status()))

    def _encode(self, vm: VirtualMachine) -> VarDict:
        """Refresh the VM's object before replying, so callers never see it lag."""
        self.vms.upsert(vm)
        return vm_to_dbus(vm)


class DbusServer:
    """Async context manager: exports the objects, follows the events, owns the bus name.

    The name is requested last, so a client that sees it finds every object in place.
    """

    def __init__(self, bus: SdBus, engine: Engine, authorizer: Authorizer) -> None:
        self._bus = bus
        self._engine = engine
        self.manager = ManagerObject(bus, engine, authorizer)
        self._handle: DbusExportHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DbusServer:
        self._handle = self.manager.export_to_dbus(MANAGER_PATH, self._bus)
        try:
            subscription = await self._resync()
            self._tasks = [
                asyncio.create_task(self._follow(subscription), name="dbus-events"),
                asyncio.create_task(self._refresh_usage(), name="dbus-usage"),
            ]
            try:
                await self._bus.request_name_async(SERVICE, 0)
            except SdBusBaseError as exc:
                raise Unavailable(f"cannot own the bus name {SERVICE}: {exc}") from exc
        except BaseException:
            await self._close()
            raise
        log.info("D-Bus API on %s at %s", SERVICE, MANAGER_PATH)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.manager.vms.close()
        if self._handle is not None:
            self._handle.stop()
            self._handle = None

    async def _resync(self) -> Subscription:
        """Subscribe first, then export every stored VM: no event can fall in between."""
        subscription = self._engine.bus.subscribe()
        try:
            self.manager.vms.replace_all(await self._engine.list_vms())
        except BaseException:
            subscription.close()
            raise
        return subscription

    async def _follow(self, subscription: Subscription) -> None:
        while True:
            try:
                async for event in subscription:
                    await self._on_event(event)
            finally:
                subscription.close()
            if not subscription.dropped:
                return  # the engine closed its bus: the daemon is stopping
            log.warning("D-Bus event follower fell behind; resynchronising the VM objects")
            subscription = await self._resync()

    async def _refresh_usage(self) -> None:
        # sd-bus property getters cannot wait, so the usage they report is read ahead here.
        while True:
            for obj in self.manager.vms.objects():
                if not obj.vm.status.is_active:
                    obj.set_usage(Usage())
                    continue
                try:
                    obj.set_usage(await self._engine.vm_usage(obj.vm.name))
                except NotFound:
                    continue  # deleted meanwhile; its event removes the object
                except Exception:
                    log.exception("could not read the usage of %s", obj.vm.name)
            await asyncio.sleep(USAGE_REFRESH)

    async def _on_event(self, event: Event) -> None:
        try:
            self.manager.vm_event.emit(
                (event.id, event.type.value, event.vm, vardict(event.payload))
            )
            try:
                vm = await self._engine.get_vm(event.vm)
            except NotFound:
                self.manager.vms.remove(event.vm)
            else:
                self.manager.vms.upsert(vm)
        except Exception:
            # One bad event must not end the follower: the objects would freeze for good.
            log.exception("could not publish event %d on D-Bus", event.id)
