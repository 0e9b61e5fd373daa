"""A network-less VM (`network.mode: vsock`) end to end on a real QEMU guest, over the
virtio-serial path (this machine has no /dev/vhost-vsock): volantd in its own netns.

Covers: no tap and no address; the health check, actions and the log stream reach the agent
over the multiplexed port, concurrently (an action held open while the log stream and another
action go through); after volantd is killed (SIGKILL), or stopped (SIGTERM), and started again the
VM is adopted and its agent answers through the new volantd's relay.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    netns,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.readme import blocks
from volant.client import VolantClient

pytestmark = pytest.mark.integration

# The workload: /hold answers once /release was asked (so the test, not a clock, decides how
# long an action stays open); it says on stdout that it waits.
WORKLOAD = """
import http.server, itertools, threading
released, holds = threading.Event(), itertools.count(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hold":
            print(f"hold {next(holds)}: waiting for release", flush=True)
            released.wait(120)
            released.clear()
        elif self.path == "/release":
            released.set()
        body = b'{"path": "%s"}' % self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 9000), H).serve_forever()
"""
PLUGIN: dict[str, Any] = {
    "workload": {
        "type": "http",
        "entrypoint": ["python3", "-c", WORKLOAD],
        "base_url": "http://127.0.0.1:9000",
        "health_check": {"path": "/health", "timeout_ms": 2000},
    },
    "resources": {"cpu_cores": 1, "memory_mb": 256},
    "network": {"mode": "vsock"},
    "actions": {
        "hold": {"method": "GET", "path": "/hold", "timeout_ms": 120000},
        "release": {"method": "GET", "path": "/release", "timeout_ms": 5000},
        "ping": {"method": "GET", "path": "/ping", "timeout_ms": 5000},
    },
}


def documented_commands() -> list[list[str]]:
    """The volar command lines of docs/networking.md's networkless block, without `volar`."""
    lines = blocks("networkless", (ROOT / "docs" / "networking.md").read_text())
    commands = [shlex.split(line) for line in lines]
    assert [argv[:3] for argv in commands] == [
        ["volar", "vms", "create"], ["volar", "vms", "get"],
        ["volar", "vms", "action"], ["volar", "vms", "logs"],
    ]  # fmt: skip
    return [argv[1:] for argv in commands]


@pytest.fixture
def settings() -> dict[str, Any]:
    build_guest()
    return {"runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"), "runtime.boot_timeout": 90}


async def _held_action_beside_the_log_stream(client: VolantClient, hold_no: int) -> list[Any]:
    """Hold one action open; the log stream says so; a second action releases the first."""

    async def wait_for_log(text: str) -> str:
        query = {"follow": "true", "limit": "50"}
        async for event in client.events("/api/v1/vms/quiet1/logs", query=query):
            line = str(json.loads(event.data)["text"])
            if text in line:
                return line
        raise AssertionError(f"the log stream ended before {text!r}")

    async with asyncio.timeout(120):
        hold = asyncio.create_task(client.request("POST", "/api/v1/vms/quiet1/actions/hold"))
        seen = await wait_for_log(f"hold {hold_no}: waiting")
        assert not hold.done()
        released = await client.request("POST", "/api/v1/vms/quiet1/actions/release")
        return [seen, released, await hold]


def test_networkless_vm_over_virtio_serial(settings: dict[str, Any], tmp_path: Path) -> None:
    with netns() as ns:
        first: Daemon | None = start_daemon(ns, tmp_path, settings, plugins=())
        second: Daemon | None = None
        try:
            assert first is not None
            first.install_plugin("quiet", **PLUGIN)
            # docs/networking.md's commands, in order, with the checks between them.
            create, get, ping, logs = documented_commands()
            created = first.volar(*create)
            assert created.returncode == 0, created.stderr + first.log_text()
            vm = wait_status(first, "quiet1", "running", timeout=120)
            assert vm["ip_address"] is None
            refused = first.volar("vms", "create", "quiet9", "--plugin", "quiet", "-p", "80:80")
            assert refused.returncode != 0
            assert "no port to publish" in refused.stderr, refused.stderr
            shown = first.volar(*get)
            assert shown.returncode == 0, shown.stderr
            assert "running" in shown.stdout
            links = first.in_ns("ip", "-o", "link", "show").stdout
            assert "vt-" not in links, links  # no tap
            run_dir = tmp_path / "run" / "vms" / "quiet1"
            assert (run_dir / "agent.sock").is_socket()  # QEMU's end of the port
            assert (run_dir / "agent-http.sock").is_socket()  # volantd's relay

            seen, released, held = first.call(lambda c: _held_action_beside_the_log_stream(c, 1))
            assert "hold 1: waiting for release" in seen
            assert released == {"path": "/release"}
            assert held == {"path": "/hold"}
            pinged = first.volar(*ping)
            assert pinged.returncode == 0, pinged.stderr
            assert '"/ping"' in pinged.stdout
            printed = first.volar(*logs)
            assert "GET /hold" in printed.stdout, printed.stdout

            # volantd killed outright: the next one adopts the VM and relays to it again.
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            stop_daemon(first, delete_vms=False)
            first = None
            second = start_daemon(ns, tmp_path, settings, plugins=())
            assert "adopted VM quiet1" in second.log_text()
            assert wait_status(second, "quiet1", "running")["pid"] == vm["pid"]
            pinged = second.volar(*ping)
            assert pinged.returncode == 0, pinged.stderr + second.log_text()
            assert '"/ping"' in pinged.stdout
            seen, released, held = second.call(lambda c: _held_action_beside_the_log_stream(c, 2))
            assert held == {"path": "/hold"}

            # And stopped politely (SIGTERM: its relay closes, the VM runs on).
            stop_daemon(second, delete_vms=False)
            second = start_daemon(ns, tmp_path, settings, plugins=())
            pinged = second.volar(*ping)
            assert pinged.returncode == 0, pinged.stderr + second.log_text()
            # A restart of the VM itself: the relay ends with the old QEMU and comes back.
            restarted = second.volar("vms", "restart", "quiet1")
            assert restarted.returncode == 0, restarted.stderr
            wait_status(second, "quiet1", "running", timeout=120)
            pinged = second.volar(*ping)
            assert pinged.returncode == 0, pinged.stderr + second.log_text()
        finally:
            for daemon in (first, second):
                if daemon is not None:
                    stop_daemon(daemon)
