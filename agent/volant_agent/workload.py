"""Start the workload, restart it by policy with backoff, and health-check it.

For a rootfs plugin the workload runs chrooted into the root volant_agent.rootfs assembled, as
the user volant_agent.users resolved in the image, in its workdir (else its home) with the
manifest's env over a default PATH and the user's HOME, USER and LOGNAME.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from volant_agent.http import fetch
from volant_agent.logs import LogBuffer
from volant_agent.manifest import RestartPolicy, Workload
from volant_agent.paths import resolve_in_root
from volant_agent.users import Identity

log = logging.getLogger(__name__)

STOP_GRACE = 10.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Health(StrEnum):
    STARTING = "starting"  # running, not yet answered its health check
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"  # not running (exited, or waiting to be restarted)
    FAILED = "failed"  # cannot be started at all (its root or user); `error` says why
    NONE = "none"  # no workload in the manifest


@dataclass(frozen=True)
class Timing:
    """Knobs that tests shrink; the defaults suit a guest."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # A run that lasted this long resets the backoff: it was a crash, not a crash loop.
    stable_after: float = 10.0
    health_interval: float = 1.0
    health_interval_starting: float = 0.1
    # Failed checks in a row before a workload that was healthy is called unhealthy.
    unhealthy_after: int = 3


class Supervisor:
    """Owns the workload process; run() until stop() is called."""

    def __init__(
        self,
        workload: Workload,
        logs: LogBuffer,
        timing: Timing | None = None,
        *,
        root: Path | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.workload = workload
        self.logs = logs
        self.timing = timing or Timing()
        # Where (chroot) and as whom the workload runs; None: the agent's root, as root.
        self.root = root
        self.identity = identity
        self.error: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.health = Health.STOPPED
        self.last_exit: int | None = None
        self.started_at: float | None = None
        # CLOCK_MONOTONIC, i.e. seconds since boot in a guest: when it first answered healthy.
        self.first_healthy: float | None = None
        self._stopping = asyncio.Event()
        self._failures = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def status(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "restarts": self.restarts,
            "health": self.health.value,
            "last_exit": self.last_exit,
            "restart_policy": self.workload.restart.value,
            "error": self.error,
            "user": None
            if self.identity is None
            else {"uid": self.identity.uid, "gid": self.identity.gid, "name": self.identity.name},
            "entrypoint": list(self.workload.entrypoint),
            "uptime": round(time.monotonic() - self.started_at, 3)
            if self.started_at is not None and self.pid is not None
            else None,
        }

    def fail(self, error: str) -> None:
        """The workload cannot start (its root or user is broken): say why, never run it."""
        self.error = error
        self.health = Health.FAILED
        self.logs.append("agent", f"workload not started: {error}")

    def _environment(self) -> dict[str, str]:
        if self.root is None and self.identity is None:
            env = dict(os.environ)
            env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        else:  # the image's own world: nothing of the agent's environment
            who = self.identity
            env = {"PATH": DEFAULT_PATH, "HOME": who.home if who else "/root"}
            if who is not None and who.name:
                env |= {"USER": who.name, "LOGNAME": who.name}
        env.update(self.workload.env)
        return env

    def _enter(self) -> Callable[[], None] | None:
        """What the child runs before exec: chroot, workdir, then drop to the identity (after
        chroot, which needs root; subprocess's own user= would drop it too early)."""
        root, who, workdir = self.root, self.identity, self.workload.workdir
        if root is None and who is None:
            return None

        def enter() -> None:
            if root is not None:
                os.chroot(root)
            os.chdir(workdir or (who.home if who else "/"))
            if who is not None:
                os.setgroups(list(who.groups))
                os.setgid(who.gid)
                os.setuid(who.uid)

        return enter

    async def _spawn(self) -> asyncio.subprocess.Process:
        enter = self._enter()
        if self.root is not None and self.workload.workdir:
            # Checked here, where the reason can be said: in the child it is only "Exception
            # occurred in preexec_fn".
            where = resolve_in_root(self.root, self.workload.workdir)
            if not where.is_dir():
                raise OSError(f"workdir {self.workload.workdir} is not a directory in the image")
        return await asyncio.create_subprocess_exec(
            *self.workload.entrypoint,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=(self.workload.workdir or None) if enter is None else None,
            env=self._environment(),
            preexec_fn=enter,
            # Its own process group, so stop() reaches whatever the workload forks.
            start_new_session=True,
        )

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the reader's limit: keep what fits
                line = await stream.read(64 * 1024)
            if not line:
                return
            self.logs.append(name, line.decode(errors="replace").rstrip("\n"))

    def _should_restart(self, code: int) -> bool:
        policy = self.workload.restart
        return policy is RestartPolicy.ALWAYS or (policy is RestartPolicy.ON_FAILURE and code != 0)

    async def run(self) -> None:
        """Run the workload, restarting it by policy, until stop()."""
        backoff = self.timing.backoff_initial
        while not self._stopping.is_set() and self.health is not Health.FAILED:
            began = time.monotonic()
            try:
                code = await self._run_once()
            except (OSError, subprocess.SubprocessError) as exc:
                # chroot, chdir or setuid failed in the child (preexec): its message is plain
                self.logs.append("agent", f"cannot start workload: {exc}")
                code = 127
            if self._stopping.is_set():
                return
            self.last_exit = code
            self.health = Health.STOPPED
            self.logs.append("agent", f"workload exited with status {code}")
            if not self._should_restart(code):
                return
            if time.monotonic() - began >= self.timing.stable_after:
                backoff = self.timing.backoff_initial
            self.logs.append("agent", f"restarting workload in {backoff:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.timing.backoff_max)
            if not self._stopping.is_set():
                self.restarts += 1

    async def _run_once(self) -> int:
        self.proc = proc = await self._spawn()
        self.started_at = time.monotonic()
        self.health = Health.STARTING
        self._failures = 0
        self.logs.append("agent", f"workload started, pid {proc.pid}")
        pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]
        checker = asyncio.create_task(self._health_loop(proc))
        try:
            code = await proc.wait()
            # Output written just before exit is still in the pipes: drain it, briefly.
            await asyncio.wait(pumps, timeout=1.0)
        finally:
            for task in (*pumps, checker):
                task.cancel()
            await asyncio.gather(*pumps, checker, return_exceptions=True)
        return code

    async def check(self) -> bool:
        """One health check: a 2xx from base_url + health path within its timeout."""
        wl = self.workload
        if not wl.health_path or not wl.base_url:
            return True
        url = wl.base_url.rstrip("/") + wl.health_path
        try:
            resp = await fetch("GET", url, timeout=wl.health_timeout_ms / 1000)
        except (OSError, TimeoutError, ValueError):
            return False
        return 200 <= resp.status < 300

    async def _health_loop(self, proc: asyncio.subprocess.Process) -> None:
        t = self.timing
        began = time.monotonic()
        while proc.returncode is None:
            ok = await self.check()
            if ok:
                self._failures = 0
                self.health = Health.HEALTHY
                if self.first_healthy is None:
                    self.first_healthy = time.monotonic()
            else:
                self._failures += 1
                if self.health is Health.STARTING:
                    grace = self.workload.health_start_period_ms / 1000
                    failed = time.monotonic() - began > grace
                else:
                    failed = self._failures >= t.unhealthy_after
                if failed:
                    self.health = Health.UNHEALTHY
            fast = self.health is Health.STARTING
            await asyncio.sleep(t.health_interval_starting if fast else t.health_interval)

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Signal the running workload (a crash on request); False when none runs."""
        if self.pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        return True

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop supervising: SIGTERM the workload's group, SIGKILL after grace."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.kill(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            self.kill(signal.SIGKILL)
            await proc.wait()
        self.health = Health.STOPPED
