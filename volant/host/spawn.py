"""Starting hypervisor processes: in their own session, logging to a file, optionally gated."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from volant.model import HypervisorFailed, disk_full_as_error

# The shell waits for one line on stdin (the gate) before it becomes the hypervisor; EOF
# without a line means the launch was abandoned, and the hypervisor never runs.
GATE_SCRIPT = 'read -r _ || exit 111; exec "$@" </dev/null'
GATE_ABANDONED = 111
# Every hypervisor carries its VM's name and its daemon's owner tag (the state directory) in its
# environment, so a scan of /proc finds the ones an earlier daemon of the same state left behind
# even without systemd (scan_processes), and never those of another daemon on the same host.
VM_ENV = "VOLANT_VM"
OWNER_ENV = "VOLANT_OWNER"


async def spawn(
    argv: Sequence[str], log_path: Path, *, vm: str, owner: str = "", gated: bool = False
) -> asyncio.subprocess.Process:
    """Start argv for VM vm in a new session (a SIGTERM to volantd's group must not reach it).

    stdout and stderr go to log_path (appended). With gated=True the process is held until
    `release()`; its stdin is the gate pipe. Raises HypervisorFailed when it cannot start.
    """
    if not argv:
        raise HypervisorFailed("empty hypervisor command line")
    command = ["/bin/sh", "-c", GATE_SCRIPT, "volant-gate", *argv] if gated else list(argv)
    try:
        with disk_full_as_error(log_path.parent, f"cannot open the hypervisor log {log_path.name}"):
            log_fd = await asyncio.to_thread(_open_log, log_path)
    except OSError as exc:
        raise HypervisorFailed(f"cannot open hypervisor log {log_path}: {exc}") from exc
    try:
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            env={**os.environ, VM_ENV: vm, OWNER_ENV: owner},
        )
    except OSError as exc:
        raise HypervisorFailed(f"cannot start {argv[0]}: {exc}") from exc
    finally:
        os.close(log_fd)


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


async def release(proc: asyncio.subprocess.Process) -> None:
    """Open the gate: the held process now executes the hypervisor."""
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    try:
        await proc.stdin.drain()
    except ConnectionResetError as exc:
        raise HypervisorFailed(f"hypervisor process {proc.pid} died at its gate") from exc
    finally:
        proc.stdin.close()


async def kill_and_reap(proc: asyncio.subprocess.Process) -> int:
    """SIGKILL the process's whole session group and wait for it; return its status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdin is not None:
        proc.stdin.close()
    return await proc.wait()


async def wait_pid(pid: int) -> None:
    """Wait until a process that is not our child ends (through a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(fd, ended.set)
    try:
        await ended.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scan_processes(owner: str, proc: Path = Path("/proc")) -> dict[str, int]:
    """Processes started for a VM by a daemon with this owner tag: VM name -> pid (the lowest
    pid when several carry the name)."""
    marker = f"{VM_ENV}=".encode()
    mine = f"{OWNER_ENV}={owner}".encode()
    found: dict[str, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        variables = environ.split(b"\0")
        if mine not in variables:
            continue
        for variable in variables:
            if variable.startswith(marker):
                name = variable[len(marker) :].decode(errors="replace")
                pid = int(entry.name)
                found[name] = min(pid, found.get(name, pid))
    return found
