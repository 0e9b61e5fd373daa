"""ProcessSupervisor with real child processes: launch, kill, crash, exit status, adoption."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from volant.engine.ports import Supervisor
from volant.host import ProcessSupervisor, make_supervisor, systemd_is_pid1
from volant.host.spawn import pid_alive
from volant.model import HypervisorFailed, ScopeLimits

pytestmark = pytest.mark.integration

LIMITS = ScopeLimits(cpus=1, memory_mb=64)
Exit = tuple[str, int, int | None]


class Exits:
    """Collects exit callbacks; lets a test wait for the next one."""

    def __init__(self) -> None:
        self.seen: list[Exit] = []
        self._queue: asyncio.Queue[Exit] = asyncio.Queue()

    async def __call__(self, name: str, pid: int, status: int | None, stopped: bool) -> None:
        assert not stopped  # only systemd stops a unit on request
        self.seen.append((name, pid, status))
        self._queue.put_nowait((name, pid, status))

    async def next(self, timeout: float = 10.0) -> Exit:
        return await asyncio.wait_for(self._queue.get(), timeout)


@pytest.fixture
async def exits() -> Exits:
    return Exits()


@pytest.fixture
async def supervisor(exits: Exits) -> AsyncIterator[ProcessSupervisor]:
    async with ProcessSupervisor() as sup:
        sup.set_exit_callback(exits)
        yield sup


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return False


async def test_launch_runs_in_own_session_and_logs(
    supervisor: ProcessSupervisor, exits: Exits, tmp_path: Path
) -> None:
    log_path = tmp_path / "vm" / "hypervisor.log"
    argv = ["sh", "-c", "echo out; echo err >&2; exec sleep 300"]
    launched = await supervisor.launch("vm1", argv, LIMITS, log_path=log_path)
    assert launched.unit == ""
    assert os.getsid(launched.pid) == launched.pid
    assert os.getpgid(launched.pid) != os.getpgid(0)
    for _ in range(100):
        if log_path.read_text() == "out\nerr\n":
            break
        await asyncio.sleep(0.02)
    assert log_path.read_text() == "out\nerr\n"
    await supervisor.kill("vm1")
    assert exits.seen == [("vm1", launched.pid, -signal.SIGKILL)]
    assert not pid_alive(launched.pid)


async def test_usage_reads_proc(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    argv = ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 300"]
    launched = await supervisor.launch("busy", argv, LIMITS, log_path=tmp_path / "log")
    await asyncio.sleep(0.5)
    usage = await supervisor.usage("busy")
    assert usage.cpu_seconds is not None
    assert usage.cpu_seconds > 0
    assert usage.memory_bytes is not None
    assert usage.memory_bytes > 0
    assert (await supervisor.usage("nope")).cpu_seconds is None
    assert not await supervisor.host_shutting_down()
    await supervisor.kill("busy")
    assert not pid_alive(launched.pid)


async def test_exit_status_is_reported_once(
    supervisor: ProcessSupervisor, exits: Exits, tmp_path: Path
) -> None:
    launched = await supervisor.launch(
        "vm2", ["sh", "-c", "exit 3"], LIMITS, log_path=tmp_path / "log"
    )
    assert await exits.next() == ("vm2", launched.pid, 3)
    await asyncio.sleep(0.1)
    assert len(exits.seen) == 1
    assert not _zombie(launched.pid)
    await supervisor.kill("vm2")  # already gone: nothing to do


async def test_crash_by_sigkill_is_noticed(
    supervisor: ProcessSupervisor, exits: Exits, tmp_path: Path
) -> None:
    launched = await supervisor.launch("vm3", ["sleep", "300"], LIMITS, log_path=tmp_path / "l")
    os.kill(launched.pid, signal.SIGKILL)
    assert await exits.next() == ("vm3", launched.pid, -signal.SIGKILL)
    assert not _zombie(launched.pid)


async def test_launch_failure_is_hypervisor_failed(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    with pytest.raises(HypervisorFailed, match="cannot start"):
        await supervisor.launch("vm4", ["/nonexistent/hv"], LIMITS, log_path=tmp_path / "l")
    with pytest.raises(HypervisorFailed, match="empty"):
        await supervisor.launch("vm4", [], LIMITS, log_path=tmp_path / "l")


async def test_second_launch_of_a_running_vm_is_refused(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    await supervisor.launch("vm5", ["sleep", "300"], LIMITS, log_path=tmp_path / "l")
    with pytest.raises(HypervisorFailed, match="already running"):
        await supervisor.launch("vm5", ["sleep", "300"], LIMITS, log_path=tmp_path / "l")
    await supervisor.kill("vm5")


async def test_adopt_watches_a_process_that_is_not_a_child(
    supervisor: ProcessSupervisor, exits: Exits
) -> None:
    # A hypervisor an earlier daemon started: orphaned, in its own session.
    shell = await asyncio.create_subprocess_exec(
        "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await shell.communicate()
    pid = int(out)
    assert await supervisor.adopt("old", pid, "") is True
    assert await supervisor.adopt("dead", 2**22 + 1, "") is False
    assert await supervisor.adopt("scoped", pid, "volant-vm-old.scope") is False
    await supervisor.kill("old")
    assert exits.seen == [("old", pid, None)]


async def test_close_stops_watching_and_leaves_vms_running(exits: Exits, tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    sup.set_exit_callback(exits)
    launched = await sup.launch("vm6", ["sleep", "300"], LIMITS, log_path=tmp_path / "l")
    await sup.close()
    assert pid_alive(launched.pid)
    os.kill(launched.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert exits.seen == []
    assert all(task.get_name() != "volant-watch-vm6" for task in asyncio.all_tasks())


def test_make_supervisor_picks_by_kind() -> None:
    # The annotations make mypy check both against the engine's port.
    by_kind: dict[str, Supervisor] = {
        kind: make_supervisor(kind) for kind in ("process", "systemd")
    }
    assert {kind: sup.kind for kind, sup in by_kind.items()} == {
        "process": "process",
        "systemd": "systemd",
    }
    expected = "systemd" if systemd_is_pid1() else "process"
    assert make_supervisor("auto").kind == expected
    with pytest.raises(ValueError, match="unknown supervisor"):
        make_supervisor("docker")


def test_systemd_is_pid1_checks_run_dir(tmp_path: Path) -> None:
    assert systemd_is_pid1(tmp_path) is True
    assert systemd_is_pid1(tmp_path / "missing") is False
