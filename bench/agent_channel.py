"""Print how a network-less VM's agent channel compares with the bridge: create to running, and
the latency of an action through volantd (REST -> engine -> agent -> workload and back).

Usage: .venv/bin/python -m bench.agent_channel [--calls 30]

One volantd in its own network namespace (tests/integration/daemon.py), the workload of
tests/integration/test_networkless.py installed twice: bridged (virtio-net on a tap) and
network-less (the multiplexed virtio-serial port here, where /dev/vhost-vsock is missing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.daemon import (
    GUEST_DIR,
    Daemon,
    build_guest,
    netns,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.test_networkless import PLUGIN
from volant.client import VolantClient


def measure(daemon: Daemon, vm: str, plugin: str, calls: int) -> tuple[float, list[float]]:
    started = time.monotonic()
    daemon.call(lambda c: c.create_vm({"name": vm, "plugin": plugin}))
    wait_status(daemon, vm, "running", timeout=180)
    boot = time.monotonic() - started

    async def ping(client: VolantClient) -> list[float]:
        took = []
        for _ in range(calls):
            start = time.monotonic()
            await client.request("POST", f"/api/v1/vms/{vm}/actions/ping")
            took.append(time.monotonic() - start)
        return took

    return boot, daemon.call(ping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    build_guest()
    settings = {"runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img")}
    with tempfile.TemporaryDirectory() as tmp, netns() as ns:
        daemon = start_daemon(ns, Path(tmp), settings, plugins=())
        try:
            daemon.install_plugin("quiet", **PLUGIN)
            daemon.install_plugin("wired", **(PLUGIN | {"network": {"mode": "bridged"}}))
            for vm, plugin in (("b1", "wired"), ("q1", "quiet")):
                boot, took = measure(daemon, vm, plugin, args.calls)
                ms = sorted(t * 1000 for t in took)
                print(
                    f"{plugin:6} create->running {boot:5.1f} s; action median "
                    f"{statistics.median(ms):6.1f} ms, p90 {ms[int(len(ms) * 0.9)]:6.1f} ms"
                )
        finally:
            stop_daemon(daemon)


if __name__ == "__main__":
    main()
