"""ProcessSupervisor: hypervisors as child processes, for hosts where systemd is not PID 1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from volant.host.spawn import pid_alive, scan_processes, spawn, wait_pid
from volant.host.types import ExitCallback
from volant.model import HypervisorFailed, Launched, ScopeLimits, Usage

log = logging.getLogger(__name__)


@dataclass
class _Child:
    name: str
    pid: int
    proc: asyncio.subprocess.Process | None  # None when adopted from an earlier daemon
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ProcessSupervisor:
    """Keeps each hypervisor as a child in its own session; no resource limits are applied.

    The exit callback runs once per VM with (name, pid, status): status as asyncio reports it
    (negative for a signal) for children, None for adopted processes.
    """

    kind = "process"

    def __init__(self, owner: str = "") -> None:
        """owner tags the hypervisors this daemon starts (its state directory), so scan()
        finds them after a restart and never another daemon's."""
        self.owner = owner
        self._vms: dict[str, _Child] = {}
        self._callback: ExitCallback | None = None

    async def __aenter__(self) -> ProcessSupervisor:
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

    async def launch(
        self, name: str, argv: Sequence[str], limits: ScopeLimits, *, log_path: Path
    ) -> Launched:
        """Start argv as a child; limits are not enforced without systemd."""
        if name in self._vms:
            raise HypervisorFailed(f"a hypervisor for {name!r} is already running")
        proc = await spawn(argv, log_path, vm=name, owner=self.owner)
        self._watch(_Child(name=name, pid=proc.pid, proc=proc))
        log.info("started hypervisor of %s as pid %d (no limits without systemd)", name, proc.pid)
        return Launched(pid=proc.pid, unit="")

    async def kill(self, name: str) -> None:
        """SIGKILL the hypervisor's session group and wait until it has ended."""
        child = self._vms.get(name)
        if child is None:
            await self._kill_stray(name)
            return
        # Launched in a new session, the hypervisor leads its own process group; one adopted
        # from elsewhere may not, so the pid itself is killed too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        await child.gone.wait()

    async def _kill_stray(self, name: str) -> None:
        """Kill a hypervisor of name that this daemon does not watch (left by an earlier one)."""
        pid = (await asyncio.to_thread(scan_processes, self.owner)).get(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await wait_pid(pid)

    async def scan(self) -> dict[str, str]:
        """Hypervisors of VMs on this host, whoever started them: VM name -> pid."""
        found = await asyncio.to_thread(scan_processes, self.owner)
        return {name: str(pid) for name, pid in found.items()}

    async def adopt(self, name: str, pid: int, unit: str) -> bool:
        """Watch a hypervisor left by an earlier daemon; False when that pid is gone."""
        if unit or not pid_alive(pid):
            return False
        self._watch(_Child(name=name, pid=pid, proc=None))
        return True

    async def usage(self, name: str) -> Usage:
        """CPU time (utime + stime) and resident memory of the hypervisor, from /proc."""
        child = self._vms.get(name)
        if child is None:
            return Usage()
        return await asyncio.to_thread(proc_usage, child.pid)

    async def host_shutting_down(self) -> bool:
        """Without systemd as PID 1 there is no host shutdown to tell apart."""
        return False

    async def close(self) -> None:
        """Stop watching (the hypervisors keep running) and await every watcher."""
        tasks = [child.task for child in self._vms.values() if child.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._vms.clear()

    def _watch(self, child: _Child) -> None:
        self._vms[child.name] = child
        child.task = asyncio.create_task(self._wait(child), name=f"volant-watch-{child.name}")

    async def _wait(self, child: _Child) -> None:
        status: int | None = None
        if child.proc is not None:
            status = await child.proc.wait()
        else:
            await wait_pid(child.pid)
        if self._vms.get(child.name) is child:
            del self._vms[child.name]
        child.gone.set()
        log.info("hypervisor of %s (pid %d) ended with status %s", child.name, child.pid, status)
        if self._callback is not None:
            try:
                await self._callback(child.name, child.pid, status, False)
            except Exception:
                log.exception("exit callback for %s failed", child.name)


def proc_usage(pid: int, proc: Path = Path("/proc")) -> Usage:
    """Usage of one process from /proc/<pid>/stat (utime, stime) and status (VmRSS)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return Usage()
    # Fields after the parenthesised comm; utime and stime are fields 14 and 15 of stat(5).
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return Usage(
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
        memory_bytes=None if rss is None else int(rss) * 1024,
    )
