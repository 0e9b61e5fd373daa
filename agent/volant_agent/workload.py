"""Start the workload, restart it by policy with backoff, and health-check it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from enum import StrEnum

from volant_agent.http import fetch
from volant_agent.logs import LogBuffer
from volant_agent.manifest import RestartPolicy, Workload

log = logging.getLogger(__name__)

STOP_GRACE = 10.0


class Health(StrEnum):
    STARTING = "starting"  # running, not yet answered its health check
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"  # not running (exited, or waiting to be restarted)
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

    def __init__(self, workload: Workload, logs: LogBuffer, timing: Timing | None = None) -> None:
        self.workload = workload
        self.logs = logs
        self.timing = timing or Timing()
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
            "entrypoint": list(self.workload.entrypoint),
            "uptime": round(time.monotonic() - self.started_at, 3)
            if self.started_at is not None and self.pid is not None
            else None,
        }

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        env.update(self.workload.env)
        return await asyncio.create_subprocess_exec(
            *self.workload.entrypoint,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.workload.workdir or None,
            env=env,
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
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as exc:
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
