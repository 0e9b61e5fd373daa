"""GET /api/v1/vms with 1,000 VMs in the store: latency (p50/p99) and requests per second.

The state database is filled before volantd starts (1,000 stopped VMs with leased addresses in
a /20), so no hypervisor runs; volantd (fallback process supervisor) then serves it in a
private network namespace and is measured through its unix socket. Usage:
python -m bench.api_list [VMS] [REQUESTS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import aiohttp

from bench.create_latency import pct
from tests.integration.daemon import build_guest, netns, start_daemon, stop_daemon
from volant.model import VMSpec, VMStatus
from volant.network import mac_for
from volant.store import SqliteStore

SUBNET = "10.64.0.0/20"
MANIFEST = '{"name": "bench", "version": "1"}'


async def fill(db: Path, count: int) -> None:
    store = await SqliteStore.open(db)
    try:
        await store.ensure_pool(IPv4Network(SUBNET), {IPv4Address("10.64.0.1")})
        await store.add_plugin(MANIFEST, "bench", "1", "qemu", "sha256:0")
        for n in range(count):
            spec = VMSpec(name=f"vm-{n:04d}", plugin="bench", cpu_cores=1, memory_mb=128)
            await store.create_vm(spec, runtime="qemu", unit="", mac_for=mac_for)
            await store.update_vm(spec.name, status=VMStatus.STOPPED)
    finally:
        await store.close()


async def measure(socket: str, path: str, requests: int, workers: int) -> None:
    connector = aiohttp.UnixConnector(path=socket, limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get() -> float:
            started = time.perf_counter()
            async with session.get(f"http://localhost{path}") as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            return time.perf_counter() - started

        for _ in range(5):  # warm up the connection pool and the daemon's caches
            await get()
        one_by_one = [await get() for _ in range(requests)]
        ms = [t * 1000 for t in one_by_one]
        started = time.perf_counter()
        queue = list(range(requests))

        async def worker() -> None:
            while queue:
                queue.pop()
                await get()

        await asyncio.gather(*(worker() for _ in range(workers)))
        rate = requests / (time.perf_counter() - started)
    print(
        f"GET {path:<28} p50={pct(ms, 0.5):6.1f} ms  p99={pct(ms, 0.99):6.1f} ms  "
        f"{rate:6.0f} req/s with {workers} clients"
    )


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    build_guest()
    with tempfile.TemporaryDirectory() as tmp, netns() as ns:
        state = Path(tmp) / "state"
        state.mkdir()
        started = time.perf_counter()
        asyncio.run(fill(state / "state.db", count))
        print(f"filled the store with {count} VMs in {time.perf_counter() - started:.1f} s")
        # As in production: the OpenAPI check of every answer is a test-only setting.
        settings = {"network.subnet": SUBNET, "network.host_ip": "10.64.0.1",
                    "api.check_openapi": False}  # fmt: skip
        daemon = start_daemon(ns, Path(tmp), settings, plugins=())
        try:
            socket = daemon.api.removeprefix("unix:")
            for path in ("/api/v1/vms", "/api/v1/vms?limit=50", "/api/v1/vms?prefix=vm-09"):
                asyncio.run(measure(socket, path, requests, workers=8))
        finally:
            stop_daemon(daemon, delete_vms=False)


if __name__ == "__main__":
    main()
