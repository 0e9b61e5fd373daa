"""SystemdSupervisor: each hypervisor in its own transient scope unit, placed before it runs.

Launch forks the hypervisor held at a gate, asks systemd (StartTransientUnit) for scope
`volant-vm-<escaped name>.scope` in volant.slice holding that pid, waits for the job, and only
then opens the gate, so the hypervisor never executes in volantd's cgroup and survives
`systemctl restart volantd`. The end of a VM is noticed through systemd (the scope leaving the
active states or being removed) and, for its own children, by reaping them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sdbus import SdBusBaseError

from volant.host.spawn import kill_and_reap, release, spawn
from volant.host.systemd_dbus import ENDED_STATES, SystemdClient, UnitExistsError
from volant.host.types import ExitCallback
from volant.host.units import SCOPE_PREFIX, scope_name, scope_properties, vm_of_scope
from volant.model import HypervisorFailed, Launched, ScopeLimits, Usage

log = logging.getLogger(__name__)

JOB_TIMEOUT = 30.0
KILL_TIMEOUT = 30.0
# Signals can be lost (a bus hiccup); the watcher re-reads the scope's state this often anyway.
RECHECK_INTERVAL = 5.0
REAP_TIMEOUT = 5.0


def _launch_failure(unit: str, exc: BaseException) -> HypervisorFailed | None:
    """What a failed launch reports; None to let exc (say, a cancellation) through as it is."""
    if isinstance(exc, UnitExistsError):
        return HypervisorFailed(
            f"systemd refused {unit}: a unit of that name exists already",
            hint=f"an earlier hypervisor may still run there: systemctl status '{unit}'",
        )
    if isinstance(exc, SdBusBaseError):
        return HypervisorFailed(f"systemd refused {unit}: {exc}")
    if isinstance(exc, TimeoutError):
        return HypervisorFailed(f"systemd did not start {unit} within {JOB_TIMEOUT}s")
    return None


@dataclass
class _Scope:
    name: str
    unit: str
    pid: int
    proc: asyncio.subprocess.Process | None  # None when adopted from an earlier daemon
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    # ActiveStates seen; "deactivating" means systemd ran a stop job (operator or shutdown):
    # KillUnit, crashes and the hypervisor's own exit go from active straight to inactive.
    states: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class SystemdSupervisor:
    """Runs each hypervisor in a transient systemd scope; use `async with` or call close().

    The exit callback runs once per VM with (name, pid, status): the status as asyncio reports
    it (negative for a signal) for hypervisors this daemon started, None for adopted ones.
    """

    kind = "systemd"

    def __init__(self) -> None:
        self._client: SystemdClient | None = None
        self._connecting = asyncio.Lock()
        self._scopes: dict[str, _Scope] = {}
        self._callback: ExitCallback | None = None

    async def __aenter__(self) -> SystemdSupervisor:
        await self._systemd()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._callback = callback

    async def _systemd(self) -> SystemdClient:
        async with self._connecting:
            if self._client is None:
                client = SystemdClient()
                try:
                    await client.__aenter__()
                except (SdBusBaseError, OSError) as exc:
                    raise HypervisorFailed(
                        f"cannot reach systemd on the system bus: {exc}"
                    ) from exc
                self._client = client
            return self._client

    async def launch(
        self, name: str, argv: Sequence[str], limits: ScopeLimits, *, log_path: Path
    ) -> Launched:
        """Start argv inside scope volant-vm-<name>.scope; it never runs outside it."""
        systemd = await self._systemd()
        if name in self._scopes:
            raise HypervisorFailed(f"a hypervisor for {name!r} is already running")
        unit = scope_name(name)
        proc = await spawn(argv, log_path, vm=name, gated=True)
        try:
            result = await systemd.start_transient_unit(
                unit, scope_properties(name, proc.pid, limits), JOB_TIMEOUT
            )
            if result != "done":
                raise HypervisorFailed(f"systemd could not start {unit}: job {result}")
            await release(proc)
        except BaseException as exc:
            await self._abandon(systemd, unit, proc)
            failure = _launch_failure(unit, exc)
            if failure is None:
                raise
            raise failure from exc
        self._watch(_Scope(name=name, unit=unit, pid=proc.pid, proc=proc))
        log.info("started hypervisor of %s as pid %d in %s", name, proc.pid, unit)
        return Launched(pid=proc.pid, unit=unit)

    async def _abandon(
        self, systemd: SystemdClient, unit: str, proc: asyncio.subprocess.Process
    ) -> None:
        # The held process has not run the hypervisor yet: kill it, and the scope if it was
        # made for it (a unit of that name holding something else is not ours to kill).
        with contextlib.suppress(SdBusBaseError):
            if await systemd.unit_of_pid(proc.pid) == unit:
                await systemd.kill_unit(unit)
        await kill_and_reap(proc)

    async def kill(self, name: str) -> None:
        """SIGKILL every process of the VM's scope and wait until systemd says it ended."""
        systemd = await self._systemd()
        scope = self._scopes.get(name)
        unit = scope.unit if scope is not None else scope_name(name)
        try:
            await systemd.kill_unit(unit)
        except SdBusBaseError as exc:
            raise HypervisorFailed(f"systemd could not kill {unit}: {exc}") from exc
        try:
            if scope is not None:
                await asyncio.wait_for(scope.gone.wait(), KILL_TIMEOUT)
            else:
                await asyncio.wait_for(self._until_ended(systemd, unit), KILL_TIMEOUT)
        except TimeoutError as exc:
            raise HypervisorFailed(f"{unit} did not end within {KILL_TIMEOUT}s") from exc

    async def _until_ended(self, systemd: SystemdClient, unit: str) -> None:
        poke = asyncio.Event()
        async with systemd.watching(unit, poke):
            while await systemd.unit_state(unit) not in (*ENDED_STATES, "gone"):
                poke.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), RECHECK_INTERVAL)

    async def adopt(self, name: str, pid: int, unit: str) -> bool:
        """Watch a hypervisor an earlier daemon started; True when pid is in the active unit."""
        if not unit or name in self._scopes:
            return False
        systemd = await self._systemd()
        try:
            if await systemd.unit_state(unit) != "active":
                return False
            if await systemd.unit_of_pid(pid) != unit:
                return False
        except SdBusBaseError as exc:
            log.warning("cannot check %s of VM %s: %s", unit, name, exc)
            return False
        self._watch(_Scope(name=name, unit=unit, pid=pid, proc=None))
        return True

    async def scan(self) -> dict[str, str]:
        """Scopes of VMs that systemd runs now, whoever started them: VM name -> unit."""
        systemd = await self._systemd()
        try:
            units = await systemd.units_matching(f"{SCOPE_PREFIX}*.scope")
        except SdBusBaseError as exc:
            raise HypervisorFailed(f"cannot list the VM scopes: {exc}") from exc
        found: dict[str, str] = {}
        for unit, state in units.items():
            name = vm_of_scope(unit)
            if name is not None and state not in ENDED_STATES:
                found[name] = unit
        return found

    async def usage(self, name: str) -> Usage:
        """CPUUsageNSec and MemoryCurrent of the VM's scope (None where not accounted)."""
        systemd = await self._systemd()
        scope = self._scopes.get(name)
        unit = scope.unit if scope is not None else scope_name(name)
        try:
            cpu_ns, memory = await systemd.scope_usage(unit)
        except SdBusBaseError as exc:
            log.warning("cannot read the usage of %s: %s", unit, exc)
            return Usage()
        return Usage(cpu_seconds=None if cpu_ns is None else cpu_ns / 1e9, memory_bytes=memory)

    async def host_shutting_down(self) -> bool:
        """True when systemd's SystemState is "stopping" (a shutdown.target job is queued)."""
        systemd = await self._systemd()
        try:
            return await systemd.system_state() == "stopping"
        except SdBusBaseError as exc:
            log.warning("cannot read systemd's SystemState: %s", exc)
            return False

    async def close(self) -> None:
        """Stop watching (hypervisors keep running), await every task, close the bus."""
        tasks = [task for scope in self._scopes.values() for task in scope.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scopes.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _watch(self, scope: _Scope) -> None:
        self._scopes[scope.name] = scope
        scope.tasks.append(asyncio.create_task(self._follow(scope), name=f"volant-{scope.unit}"))
        if scope.proc is not None:
            scope.tasks.append(
                asyncio.create_task(self._reap(scope), name=f"volant-reap-{scope.pid}")
            )

    async def _reap(self, scope: _Scope) -> None:
        # Our own child: reaped here so no zombie stays, and the watcher hears of it at once.
        assert scope.proc is not None
        await scope.proc.wait()
        scope.poke.set()

    async def _follow(self, scope: _Scope) -> None:
        assert self._client is not None
        systemd = self._client
        async with systemd.watching(scope.unit, scope.poke, scope.states):
            await self._until_scope_ends(systemd, scope)
        status = await self._exit_status(scope)
        if self._scopes.get(scope.name) is scope:
            del self._scopes[scope.name]
        scope.gone.set()
        stopped = "deactivating" in scope.states
        log.info(
            "%s (pid %d) ended with status %s%s",
            scope.unit,
            scope.pid,
            status,
            " (stopped by systemd)" if stopped else "",
            extra={"VM": scope.name, "UNIT": scope.unit},
        )
        if self._callback is not None:
            try:
                await self._callback(scope.name, scope.pid, status, stopped)
            except Exception:
                log.exception("exit callback for %s failed", scope.name)

    async def _until_scope_ends(self, systemd: SystemdClient, scope: _Scope) -> None:
        leftovers_killed = False
        while True:
            scope.poke.clear()
            exited = scope.proc is not None and scope.proc.returncode is not None
            try:
                state = await systemd.unit_state(scope.unit)
            except SdBusBaseError as exc:
                log.warning("cannot read the state of %s: %s", scope.unit, exc)
                if exited:
                    return  # our own child is gone; systemd can be asked no more
                state = "unknown"
            scope.states.add(state)
            if state in ENDED_STATES or state == "gone":
                return
            if exited and not leftovers_killed:
                # The hypervisor is gone; whatever it left in its scope goes with it.
                leftovers_killed = True
                with contextlib.suppress(SdBusBaseError):
                    await systemd.kill_unit(scope.unit)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(scope.poke.wait(), RECHECK_INTERVAL)

    async def _exit_status(self, scope: _Scope) -> int | None:
        if scope.proc is None:
            return None
        try:
            return await asyncio.wait_for(scope.proc.wait(), REAP_TIMEOUT)
        except TimeoutError:
            log.warning("%s ended but pid %d was not reaped yet", scope.unit, scope.pid)
            return None
