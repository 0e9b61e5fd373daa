"""A real volantd (fallback process supervisor) inside a private network namespace.

The daemon's REST API is reached through its unix socket, which works across network
namespaces; anything that must touch the guests' network runs through `ip netns exec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from scripts.testplugin import write_test_plugin
from scripts.volantbox import volantd_config
from volant.client import ApiError, VolantClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUEST_DIR = ROOT / ".cache" / "guest"
PLUGINS = "/api/v1/plugins"


def build_guest() -> Path:
    """Build (or reuse) the test guest kernel and initramfs."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_guest.py"), "--out", str(GUEST_DIR)],
        check=True,
    )
    return GUEST_DIR


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"volant-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        kill_netns_processes(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


def kill_netns_processes(name: str) -> None:
    """SIGKILL everything in the namespace, again until nothing is left: a volantd that is not
    dead yet may start a new helper (dnsmasq) after seeing the first one killed, and a process
    left behind would keep the namespace alive after `ip netns del`."""
    for _ in range(50):
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)


def volar(api: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "volar"), "--api", api, *argv],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@dataclass
class Daemon:
    """A running volantd; `api` is its unix-socket base for VolantClient and volar."""

    proc: subprocess.Popen[bytes]
    ns: str
    tmp: Path
    api: str
    log: Path

    def call(self, coro_fn: Any) -> Any:
        """Run `await coro_fn(client)` with a fresh client (for synchronous tests)."""

        async def run() -> Any:
            async with VolantClient(self.api, timeout=180) as client:
                return await coro_fn(client)

        return asyncio.run(run())

    def in_ns(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def volar(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return volar(self.api, *argv)

    def http_get(self, url: str, *, timeout: float = 90) -> str:
        """GET url from inside the namespace, retrying until it answers or timeout."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.in_ns("curl", "-sS", "--max-time", "3", url, timeout=10)
            if proc.returncode == 0 and proc.stdout:
                return proc.stdout
            last = proc.stderr
            time.sleep(0.5)
        raise AssertionError(f"{url} did not answer within {timeout}s: {last}")

    def install_plugin(self, name: str = "demo", **changes: Any) -> dict[str, Any]:
        """Install a test plugin for the busybox guest (scripts/testplugin.py) over REST."""
        path = write_test_plugin(self.tmp / "plugins", name, **changes)
        body = {"manifest": path.read_text(), "origin": path.as_uri()}
        plugin: dict[str, Any] = self.call(lambda c: c.request("POST", "/api/v1/plugins", body))
        return plugin

    def agent_secret(self, vm: str) -> str:
        """The VM's agent secret, read from its config disk (as only root and the guest can)."""
        disk = self.tmp / "run" / "vms" / vm / "config.img"
        data = disk.read_bytes()
        length = int.from_bytes(data[8:12], "big")
        secret: str = json.loads(data[44 : 44 + length])["agent_secret"]
        return secret

    def agent_curl(
        self, vm: str, ip: str, path: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """curl the VM's agent from the host side (the namespace), with its secret."""
        header = f"X-Volant-Agent-Secret: {self.agent_secret(vm)}"
        return self.in_ns("curl", "-sS", "--max-time", "10", "-H", header, *args,
                          f"http://{ip}:8080{path}")  # fmt: skip

    def link_exists(self, ifname: str) -> bool:
        return self.in_ns("ip", "link", "show", ifname).returncode == 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(
    ns: str,
    tmp: Path,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    plugins: Sequence[str] = ("demo",),
) -> Daemon:
    """Start volantd in `ns` with state under `tmp`, install the test `plugins` (unless the
    state already has them); returns once /healthz answers."""
    config = volantd_config(
        {
            "state_dir": str(tmp / "state"),
            "runtime_dir": str(tmp / "run"),
            "api.listen": "127.0.0.1:7777",
            "api.socket": str(tmp / "run" / "volantd.sock"),
            "host.supervisor": "process",
            **(settings or {}),
        }
    )
    cfg_path = tmp / "volantd.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = tmp / "volantd.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLANT_")} | dict(env or {})
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "volantd"), "--config", str(cfg_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    daemon = Daemon(proc, ns, tmp, f"unix:{tmp / 'run' / 'volantd.sock'}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"volantd exited {proc.returncode}:\n{daemon.log_text()}")
        with contextlib.suppress(ApiError, OSError):
            if daemon.call(lambda c: c.request("GET", "/healthz")) == {"status": "ok"}:
                installed = {
                    p["name"] for p in daemon.call(lambda c: c.request("GET", PLUGINS))["plugins"]
                }
                for name in plugins:
                    if name not in installed:
                        daemon.install_plugin(name)
                return daemon
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"volantd did not become healthy:\n{daemon.log_text()}")


@contextlib.contextmanager
def running_daemon(
    tmp: Path,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    plugins: Sequence[str] = ("demo",),
) -> Iterator[Daemon]:
    """start_daemon in a network namespace of its own; stop_daemon and the namespace after."""
    with netns() as ns:
        daemon = start_daemon(ns, tmp, settings, env, plugins)
        try:
            yield daemon
        finally:
            stop_daemon(daemon)


def stop_daemon(daemon: Daemon, *, delete_vms: bool = True) -> None:
    """Delete what the test left, then SIGTERM volantd (VMs would outlive it otherwise)."""
    if delete_vms and daemon.proc.poll() is None:
        with contextlib.suppress(Exception):
            for vm in daemon.call(lambda c: c.list_vms()):
                daemon.call(lambda c, name=vm["name"]: c.delete_vm(name))
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(20)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


async def _raw(daemon: Daemon, method: str, path: str, body: bytes | None = None) -> Any:
    sock = daemon.api.removeprefix("unix:")
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
        session.request(
            method,
            f"http://localhost{path}",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


def raw(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, ctype, text = asyncio.run(_raw(daemon, method, path, data))
    return status, ctype, json.loads(text) if text else None


def wait_status(daemon: Daemon, name: str, status: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    vm: dict[str, Any] = {}
    while time.monotonic() < deadline:
        vm = daemon.call(lambda c: c.get_vm(name))
        if vm["status"] == status:
            return vm
        time.sleep(0.2)
    raise AssertionError(f"{name} stayed {vm.get('status')}, wanted {status}")
