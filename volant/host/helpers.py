"""Long-running helper daemons of volantd (its dnsmasq): a transient service, or a child.

Unlike a build worker, a helper outlives volantd (guests keep their DNS and DHCP while the
daemon restarts), and the next volantd finds it again by name. With systemd it is the transient
service `volant-<name>.service` in volant.slice, started by systemd itself (outside
volantd.service's sandbox, which keeps only CAP_NET_ADMIN: dnsmasq binds ports 53 and 67).
Without systemd it is a child in its own session, tagged with its name and the daemon's owner
in its environment, as hypervisors are (volant.host.spawn), so a /proc scan finds it.
Both satisfy volant.engine.ports.Helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from volant.host.spawn import OWNER_ENV, pid_alive
from volant.host.systemd_dbus import ENDED_STATES
from volant.host.transient import TransientServices
from volant.host.units import SLICE
from volant.model import Unavailable

log = logging.getLogger(__name__)

HELPER_ENV = "VOLANT_HELPER"
STOP_GRACE = 5.0
# Binding privileged ports, DHCP's raw sockets and ARP entries; nothing else.
CAPABILITIES = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


def unit_name(name: str) -> str:
    return f"volant-{name}.service"


def service_properties(name: str, argv: Sequence[str]) -> list[tuple[str, tuple[str, Any]]]:
    """StartTransientUnit properties of a helper, as (name, (D-Bus signature, value))."""
    mask = sum(1 << bit for bit in CAPABILITIES.values())
    return [
        ("Description", ("s", f"Volant {name} on the VM bridge")),
        ("ExecStart", ("a(sasb)", [(argv[0], list(argv), False)])),
        ("Slice", ("s", SLICE)),
        ("CollectMode", ("s", "inactive-or-failed")),
        ("Environment", ("as", [f"{HELPER_ENV}={name}"])),
        ("TimeoutStopUSec", ("t", int(STOP_GRACE * 1e6))),
        # A crash is not the end of the guests' DNS; a stop by volantd (SIGTERM) is clean.
        ("Restart", ("s", "on-failure")),
        ("RestartUSec", ("t", 1_000_000)),
        ("CapabilityBoundingSet", ("t", mask)),
        ("NoNewPrivileges", ("b", True)),
    ]


class SystemdHelpers:
    """Each helper a transient service (journal output: `journalctl -u volant-dnsmasq`)."""

    kind = "systemd"

    def __init__(self) -> None:
        self._services = TransientServices()

    async def start(self, name: str, argv: Sequence[str], *, log_path: Path) -> None:
        await self._services.start(unit_name(name), service_properties(name, argv))

    async def running(self, name: str) -> bool:
        state = await (await self._services.systemd()).unit_state(unit_name(name))
        return state not in (*ENDED_STATES, "gone")

    async def signal(self, name: str, signum: int) -> bool:
        return await (await self._services.systemd()).kill_unit(unit_name(name), signum)

    async def stop(self, name: str) -> None:
        """SIGTERM, SIGKILL after STOP_GRACE; returns once the unit is gone or ended."""
        await self._services.stop(unit_name(name), lambda: self._ended(name), STOP_GRACE)

    async def _ended(self, name: str) -> None:
        for _ in itertools.count():
            if not await self.running(name):
                return
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._services.close()


class ProcessHelpers:
    """Each helper a child in its own session, logging to log_path; it outlives volantd."""

    kind = "process"

    def __init__(self, owner: str = "", proc_root: Path = Path("/proc")) -> None:
        self.owner = owner
        self.proc_root = proc_root
        self._reapers: set[asyncio.Task[int]] = set()

    async def start(self, name: str, argv: Sequence[str], *, log_path: Path) -> None:
        env = {**os.environ, HELPER_ENV: name, OWNER_ENV: self.owner}
        try:
            fd = await asyncio.to_thread(_open_log, log_path)
        except OSError as exc:
            raise Unavailable(f"cannot open {log_path}: {exc.strerror}") from exc
        try:
            child = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise Unavailable(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(fd)
        reaper = asyncio.create_task(child.wait())  # no zombie when it ends before volantd
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def running(self, name: str) -> bool:
        return bool(await asyncio.to_thread(self._pids, name))

    async def signal(self, name: str, signum: int) -> bool:
        pids = await asyncio.to_thread(self._pids, name)
        self._send(pids, signum)
        return bool(pids)

    async def stop(self, name: str) -> None:
        """SIGTERM, SIGKILL after STOP_GRACE; returns once its processes have closed their
        files (its sockets are free for the next one)."""
        pids = await asyncio.to_thread(self._pids, name)
        if not pids:
            return
        self._send(pids, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._ended(pids), STOP_GRACE)
        except TimeoutError:
            self._send(pids, signal.SIGKILL)
            await self._ended(pids)

    def _send(self, pids: list[int], signum: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def _ended(self, pids: list[int]) -> None:
        for _ in itertools.count():
            if not any(self._exiting_or_alive(pid) for pid in pids):
                return
            await asyncio.sleep(0.1)

    def _exiting_or_alive(self, pid: int) -> bool:
        """False once pid is gone or a zombie: a process that is still exiting may hold its
        sockets after its environment is no longer readable."""
        try:
            stat = (self.proc_root / str(pid) / "stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    def _pids(self, name: str) -> list[int]:
        """Live processes of this owner's helper `name` (zombies are not running)."""
        wanted = {f"{HELPER_ENV}={name}".encode(), f"{OWNER_ENV}={self.owner}".encode()}
        pids = []
        for entry in self.proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                variables = set((entry / "environ").read_bytes().split(b"\0"))
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if wanted <= variables and state != "Z" and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    async def close(self) -> None:
        """Helpers outlive the daemon: only stop waiting for them."""
        for reaper in list(self._reapers):
            reaper.cancel()
        await asyncio.gather(*self._reapers, return_exceptions=True)


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def make_helpers(kind: str, owner: str = "") -> SystemdHelpers | ProcessHelpers:
    """The helper runner that matches the VM supervisor's kind."""
    return SystemdHelpers() if kind == "systemd" else ProcessHelpers(owner)
