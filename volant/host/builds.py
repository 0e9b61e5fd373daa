"""Where plugin build workers run: a transient systemd service, or a plain child process.

volantd.service keeps only CAP_NET_ADMIN, and a process it forks inherits that sandbox, so a
build that must unpack an image as root (chown, mknod, file capabilities) cannot run inside
it. With systemd, the worker is a transient service `volant-build-<id>.service` that systemd
itself starts with only what the build needs: the file-ownership capabilities, network access,
a read-only host except the image cache and the build's own directory. Without systemd (a
container, a developer box) it is a child in its own session, tagged with the build id and the
daemon's owner in its environment so a restarted daemon can find and kill what is left.
Both satisfy volant.engine.builds.BuildRunner.
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

BUILD_ENV = "VOLANT_BUILD"
UNIT_PREFIX = "volant-build-"
STOP_GRACE = 10.0
# Capabilities a build needs as root: umoci keeps owners, modes, device nodes and file
# capabilities; mkfs.erofs reads every file whatever its mode. Nothing else (no SYS_ADMIN).
CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_MKNOD": 27,
    "CAP_SETFCAP": 31,
}


def unit_name(build_id: str) -> str:
    return f"{UNIT_PREFIX}{build_id}.service"


def service_properties(
    build_id: str, argv: Sequence[str], log_path: Path, writable: Sequence[Path]
) -> list[tuple[str, tuple[str, Any]]]:
    """StartTransientUnit properties of a build worker, as (name, (D-Bus signature, value))."""
    mask = sum(1 << bit for bit in CAPABILITIES.values())
    return [
        ("Description", ("s", f"Volant plugin build {build_id}")),
        ("ExecStart", ("a(sasb)", [(argv[0], list(argv), False)])),
        ("Slice", ("s", SLICE)),
        ("CollectMode", ("s", "inactive-or-failed")),
        ("StandardOutputFileToAppend", ("s", str(log_path))),
        ("StandardErrorFileToAppend", ("s", str(log_path))),
        ("Environment", ("as", [f"{BUILD_ENV}={build_id}", f"TMPDIR={writable[-1]}"])),
        ("TimeoutStopUSec", ("t", int(STOP_GRACE * 1e6))),
        ("CapabilityBoundingSet", ("t", mask)),
        ("AmbientCapabilities", ("t", 0)),
        ("NoNewPrivileges", ("b", True)),
        ("ProtectSystem", ("s", "strict")),
        ("ReadWritePaths", ("as", [str(p) for p in writable])),
        ("ProtectKernelTunables", ("b", True)),
        ("ProtectKernelModules", ("b", True)),
        ("ProtectControlGroups", ("b", True)),
        # Not PrivateDevices=, which drops CAP_MKNOD: an image may hold device nodes to write.
        ("DevicePolicy", ("s", "closed")),
        ("RestrictAddressFamilies", ("(bas)", (True, ["AF_UNIX", "AF_INET", "AF_INET6"]))),
        ("RestrictNamespaces", ("t", 0)),  # the mask of namespaces allowed: none
        ("LockPersonality", ("b", True)),
        ("RestrictRealtime", ("b", True)),
    ]


class SystemdBuildRunner:
    """Each worker in its own transient service, started by systemd (not forked by volantd)."""

    kind = "systemd"

    def __init__(self) -> None:
        self._services = TransientServices()

    async def start(
        self, build_id: str, argv: Sequence[str], *, log_path: Path, writable: Sequence[Path]
    ) -> None:
        props = service_properties(build_id, argv, log_path, writable)
        await self._services.start(unit_name(build_id), props)

    async def wait(self, build_id: str) -> None:
        systemd = await self._services.systemd()
        unit, poke = unit_name(build_id), asyncio.Event()
        async with systemd.watching(unit, poke):
            while await systemd.unit_state(unit) not in (*ENDED_STATES, "gone"):
                poke.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), 2.0)

    async def stop(self, build_id: str) -> None:
        """SIGTERM (the worker cleans up), SIGKILL after STOP_GRACE; returns once it ended."""
        await self._services.stop(unit_name(build_id), lambda: self.wait(build_id), STOP_GRACE)

    async def scan(self) -> set[str]:
        systemd = await self._services.systemd()
        units = await systemd.units_matching(f"{UNIT_PREFIX}*.service")
        return {
            unit.removeprefix(UNIT_PREFIX).removesuffix(".service")
            for unit, state in units.items()
            if state not in ENDED_STATES
        }

    async def close(self) -> None:
        await self._services.close()


class ProcessBuildRunner:
    """Each worker a child process in its own session (no privilege separation: the daemon's
    own privileges apply); the fallback where systemd is not PID 1."""

    kind = "process"

    def __init__(self, owner: str = "", proc_root: Path = Path("/proc")) -> None:
        self.owner = owner
        self.proc_root = proc_root
        self._children: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, build_id: str, argv: Sequence[str], *, log_path: Path, writable: Sequence[Path]
    ) -> None:
        env = {
            **os.environ,
            BUILD_ENV: build_id,
            OWNER_ENV: self.owner,
            "TMPDIR": str(writable[-1]),
        }
        fd = await asyncio.to_thread(_open_log, log_path)
        try:
            self._children[build_id] = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise Unavailable(f"cannot start the build worker {argv[0]}: {exc}") from exc
        finally:
            os.close(fd)

    async def wait(self, build_id: str) -> None:
        child = self._children.get(build_id)
        if child is not None:
            await child.wait()
            self._children.pop(build_id, None)
        await self._none_left(build_id)

    async def stop(self, build_id: str) -> None:
        """SIGTERM every process of the build (the worker cancels its tools), SIGKILL what is
        left after STOP_GRACE; returns once none is left."""
        self._signal(build_id, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._gone(build_id), STOP_GRACE)
        except TimeoutError:
            self._signal(build_id, signal.SIGKILL)
            await self._gone(build_id)

    async def _gone(self, build_id: str) -> None:
        await self.wait(build_id)

    async def _none_left(self, build_id: str) -> None:
        # Not our children (an earlier daemon's, or the worker's tools): poll /proc for them.
        for _ in itertools.count():
            if not await asyncio.to_thread(self._pids, build_id):
                return
            await asyncio.sleep(0.1)

    def _signal(self, build_id: str, signum: int) -> None:
        for pid in self._pids(build_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _pids(self, build_id: str) -> list[int]:
        return [pid for pid, found in self._scan().items() if found == build_id]

    async def scan(self) -> set[str]:
        return set((await asyncio.to_thread(self._scan)).values())

    def _scan(self) -> dict[int, str]:
        """pid -> build id of every process (worker, skopeo, umoci, …) of this owner's builds;
        they all inherit the worker's environment."""
        marker, mine = f"{BUILD_ENV}=".encode(), f"{OWNER_ENV}={self.owner}".encode()
        found: dict[int, str] = {}
        for entry in self.proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                variables = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine not in variables:
                continue
            for variable in variables:
                if variable.startswith(marker) and pid_alive(int(entry.name)):
                    found[int(entry.name)] = variable[len(marker) :].decode(errors="replace")
        return found

    async def close(self) -> None:
        """Builds do not outlive the daemon that follows them: stop every one still running."""
        for build_id in list(self._children):
            await self.stop(build_id)


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def make_build_runner(kind: str, owner: str = "") -> SystemdBuildRunner | ProcessBuildRunner:
    """The runner that matches the VM supervisor: transient services under systemd, children
    otherwise (owner tags them, as it tags hypervisors)."""
    return SystemdBuildRunner() if kind == "systemd" else ProcessBuildRunner(owner)
