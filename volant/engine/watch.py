"""How the engine follows hypervisors it did not just act on: exits, crashes, adoption at start.

`Watching` is a base of `Engine`; it holds the live-process table, the per-VM locks, the
engine's own background tasks and event emission, so the verbs in engine.py stay short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from volant.engine.ending import judge_end
from volant.engine.events import EventBus
from volant.engine.hoststeps import HostSteps
from volant.engine.ports import Hypervisor, HypervisorDriver, Machines, Network, Store, Supervisor
from volant.engine.repair import Repair
from volant.model import (
    Event,
    EventType,
    HypervisorFailed,
    LaunchSpec,
    VirtualMachine,
    VMStatus,
)

log = logging.getLogger("volant.engine.engine")

END_DRAIN = 2.0  # how long an ended hypervisor's last events may take to arrive


@dataclass
class Live:
    """A hypervisor process this daemon watches."""

    hv: Hypervisor
    pid: int = 0
    launching: bool = True
    stop_requested: bool = False
    exit_status: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    health: asyncio.Task[None] | None = None  # the health gate, while one is pending
    follower: asyncio.Task[None] | None = None  # hv.follow(), from launch or adoption on

    def cancel_health(self) -> None:
        """Stop waiting for the workload's health (unless the gate itself is asking)."""
        if self.health is not None and self.health is not asyncio.current_task():
            self.health.cancel()


class Watching:
    """Exit handling, reconcile at start, owned tasks and events; a base of Engine."""

    store: Store
    driver: HypervisorDriver
    supervisor: Supervisor
    network: Network
    machines: Machines | None
    bus: EventBus
    host: HostSteps
    repair: Repair
    _locks: dict[str, asyncio.Lock]
    _live: dict[str, Live]
    _tasks: set[asyncio.Task[None]]

    def launch_spec(self, vm: VirtualMachine) -> LaunchSpec:
        raise NotImplementedError

    def _resume_health_gate(self, vm: VirtualMachine, live: Live) -> bool:
        """Wait again for the health of an adopted VM that was starting; False when it has
        no health check (it is running as soon as its hypervisor is)."""
        return False

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _on_exit(self, name: str, pid: int, status: int | None, stopped: bool) -> None:
        """Supervisor callback: a hypervisor ended. Unasked, that is a crash; an operator's
        `systemctl stop` of its scope (stopped) makes the VM stopped instead."""
        live = self._live.get(name)
        if live is None or live.pid != pid:
            return
        live.exit_status = status
        live.exited.set()
        if live.launching or live.stop_requested:
            return  # the verb that is under way finishes the job
        self._spawn(self._mark_ended(name, live, stopped=stopped))

    def _follow(self, live: Live) -> None:
        """Listen to the hypervisor's own events (they tell why it ends) while it is watched."""
        live.follower = self._spawn(live.hv.follow())

    async def _mark_ended(self, name: str, live: Live, *, stopped: bool) -> None:
        async with self._lock(name):
            if self._live.get(name) is not live or live.stop_requested:
                return
            del self._live[name]
            live.cancel_health()
            # The hypervisor's last words may still be in flight when its exit is noticed.
            end = await live.hv.end_cause(END_DRAIN)
            if live.follower is not None:
                live.follower.cancel()
            await self.host.unplumb(name)
            ending = judge_end(end, live.exit_status, stopped=stopped)
            vm = await self.store.update_vm(
                name, status=ending.status, pid=None, status_reason=ending.reason
            )
            level = logging.INFO if ending.status is VMStatus.STOPPED else logging.WARNING
            log.log(level, "VM %s %s: %s", name, ending.status, ending.reason, extra={"VM": name})
            await self._emit(ending.event, vm, **ending.payload)

    async def _reconcile(self) -> None:
        """Settle every VM an earlier daemon left half-way, then make the host agree with the
        store (repair), then finish the stops that were under way."""
        stopping: list[VirtualMachine] = []
        for vm in await self.store.list_vms():
            if await self._settle(vm) and vm.status is VMStatus.STOPPING:
                stopping.append(vm)
        await self.repair.run(await self.store.list_vms(), active=set(self._live))
        for vm in stopping:
            log.info("VM %s: finishing the stop volantd was doing", vm.name, extra={"VM": vm.name})
            self._spawn(self._resume_stop(vm))

    async def _settle(self, vm: VirtualMachine) -> bool:
        """Bring one VM to a state an operator can act on; True when its hypervisor is adopted.

        A create or start cut short before its outcome was recorded (no pid in the row) ends
        in error with the reason; a hypervisor that outlived the daemon is adopted; one that is
        gone makes its VM crashed (stopped, when it was being stopped anyway).
        """
        if vm.status is VMStatus.CREATING or (vm.status is VMStatus.STARTING and not vm.pid):
            doing = "creating" if vm.status is VMStatus.CREATING else "starting"
            reason = f"volantd stopped while {doing} it; its resources were removed"
            failed = await self.store.update_vm(
                vm.name, status=VMStatus.ERROR, pid=None, status_reason=reason
            )
            log.error("VM %s: %s", vm.name, reason, extra={"VM": vm.name})
            await self._emit(EventType.VM_ERROR, failed, reason=reason)
            return False
        if not vm.status.is_active:
            return False
        live = Live(hv=self.driver.for_vm(self.launch_spec(vm)), pid=vm.pid or 0)
        live.launching = False
        self._live[vm.name] = live
        if vm.pid and await self.supervisor.adopt(vm.name, vm.pid, vm.unit):
            log.info(
                "adopted VM %s (pid %d, unit %s)",
                vm.name,
                vm.pid,
                vm.unit or "-",
                extra={"VM": vm.name, "UNIT": vm.unit},
            )
            self._follow(live)
            if vm.status is VMStatus.STARTING and not self._resume_health_gate(vm, live):
                await self.store.update_vm(vm.name, status=VMStatus.RUNNING)
            return True
        del self._live[vm.name]
        if vm.status is VMStatus.STOPPING:
            stopped = await self.store.update_vm(vm.name, status=VMStatus.STOPPED, pid=None)
            await self._emit(EventType.VM_STOPPED, stopped, reason="ended while volantd was down")
            return False
        crashed = await self.store.update_vm(
            vm.name,
            status=VMStatus.CRASHED,
            pid=None,
            status_reason="hypervisor gone when volantd started",
        )
        log.warning(
            "VM %s crashed while volantd was down: %s is gone",
            vm.name,
            vm.unit or f"pid {vm.pid}",
            extra={"VM": vm.name, "UNIT": vm.unit},
        )
        await self._emit(EventType.VM_CRASHED, crashed, reason="hypervisor gone at start")
        return False

    async def _resume_stop(self, vm: VirtualMachine) -> None:
        raise NotImplementedError

    async def _emit_repair(self, vm: str, payload: dict[str, Any]) -> None:
        event = await self.store.append_event(EventType.HOST_REPAIRED, vm, payload)
        self.bus.publish(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task failed", exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _emit(self, type: EventType, vm: VirtualMachine, **extra: Any) -> Event:
        payload = {"status": vm.status.value, "ip_address": vm.ip_address, "pid": vm.pid, **extra}
        event = await self.store.append_event(type, vm.name, payload)
        self.bus.publish(event)
        return event

    async def _emit_gone(self, vm: VirtualMachine, exc: BaseException) -> None:
        """After a failed create: say why, then that the VM no longer exists."""
        try:
            await self._emit(
                EventType.VM_ERROR, replace(vm, status=VMStatus.ERROR), reason=str(exc)
            )
            await self._emit(EventType.VM_DELETED, replace(vm, status=VMStatus.ERROR))
        except Exception:
            log.exception("could not record the failed create of %s", vm.name)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_ready(name: str, live: Live, timeout: float, log_file: Path) -> None:
    """Until the hypervisor answers on its API socket; HypervisorFailed (naming its log) when
    it exits first."""
    ready = asyncio.ensure_future(live.hv.wait_ready(timeout))
    exited = asyncio.ensure_future(live.exited.wait())
    try:
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if live.exited.is_set() and not ready.done():
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        raise HypervisorFailed(
            f"hypervisor of {name!r} exited during start (status {live.exit_status}); "
            f"see {log_file}"
        )
    ready.result()
