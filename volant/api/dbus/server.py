"""The D-Bus server: exports the manager and its objects, keeps them current, owns the name.

A background task owned by `DbusServer` follows the engine's EventBus: each event becomes a
VMEvent signal and refreshes (or removes) the VM's object, so PropertiesChanged follows every
status change. Plugins have no events: the manager's own handlers update their objects at
once, and the engine's plugins_changed event (or, at the latest, the periodic refresh) brings
in changes made over REST or by volar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from sdbus import SdBus, SdBusBaseError
from sdbus.dbus_proxy_async_interface_base import DbusExportHandle

from volant.auth.polkit import Authorizer
from volant.engine import Engine
from volant.engine.events import Subscription
from volant.model import Event, NotFound, Unavailable, Usage

from .codec import vardict
from .interfaces import MANAGER_PATH, SERVICE
from .manager import ManagerObject

log = logging.getLogger(__name__)

REFRESH = 5.0
"""Seconds between reads of the VMs' usage (CPUUsageNSec, MemoryCurrent) and of the plugins."""


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
            await self._refresh_plugins()
            self._tasks = [
                asyncio.create_task(self._follow(subscription), name="dbus-events"),
                asyncio.create_task(self._refresh(), name="dbus-refresh"),
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
        self.manager.plugins.close()
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

    async def _refresh(self) -> None:
        changed = self._engine.plugins_changed
        while True:
            changed.clear()
            for step in (self._refresh_usage, self._refresh_plugins):
                try:
                    await step()
                except Exception:
                    log.exception("D-Bus refresh step %s failed", step.__name__)
            # A plugin change made over REST shows at once; usage every REFRESH seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), REFRESH)

    async def _refresh_plugins(self) -> None:
        """Export the plugins as the store has them, unless a handler changed one meanwhile."""
        plugins = self.manager.plugins
        seen = plugins.generation
        current = await self._engine.list_plugins()
        if plugins.generation == seen:
            plugins.replace_all(current)

    async def _refresh_usage(self) -> None:
        # sd-bus property getters cannot wait, so the usage they report is read ahead here.
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

    async def _on_event(self, event: Event) -> None:
        try:
            self.manager.vm_event.emit(
                (event.id, event.type.value, event.vm, vardict(event.payload))
            )
            if not event.vm:
                return  # a build's or the host's event: no VM object to refresh
            try:
                vm = await self._engine.get_vm(event.vm)
            except NotFound:
                self.manager.vms.remove(event.vm)
            else:
                self.manager.vms.upsert(vm)
        except Exception:
            # One bad event must not end the follower: the objects would freeze for good.
            log.exception("could not publish event %d on D-Bus", event.id)
