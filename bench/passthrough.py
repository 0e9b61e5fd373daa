"""Latency and throughput of the workload passthrough (volantd → agent → workload) on a real guest.

Starts volantd in a private network namespace with one bridged and one network-less VM of the
webtest workload (tests/integration/webtest_workload.py) and, for each, prints over volantd's
unix socket: the median and p95 of a small GET through /api/v1/vms/{name}/proxy, of a WebSocket
echo round trip, and the MB/s of a download and an upload of --mib MiB. QEMU runs under TCG here,
so the guest's side dominates; compare modes and changes, not machines.
Usage: python -m bench.passthrough [--runs 50] [--mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.integration.daemon import GUEST_DIR, build_guest, netns, start_daemon, stop_daemon
from tests.integration.test_passthrough import install_webtest

CHUNK = 1 << 16


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


async def _zeros(total: int) -> AsyncIterator[bytes]:
    block = bytes(CHUNK)
    while total > 0:
        yield block[: min(total, CHUNK)]
        total -= CHUNK


async def measure(sock: str, vm: str, runs: int, mib: int) -> None:
    proxy = f"/api/v1/vms/{vm}/proxy"
    connector = aiohttp.UnixConnector(path=sock)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        connector=connector, base_url="http://localhost", timeout=timeout
    ) as s:
        gets = []
        for _ in range(runs):
            start = time.perf_counter()
            async with s.get(f"{proxy}/hello") as r:
                await r.read()
            gets.append(time.perf_counter() - start)
        echoes = []
        async with s.ws_connect(f"{proxy}/ws") as ws:
            for n in range(runs):
                start = time.perf_counter()
                await ws.send_str(f"ping {n}")
                await ws.receive_str()
                echoes.append(time.perf_counter() - start)
        size = mib << 20
        start = time.perf_counter()
        async with s.get(f"{proxy}/bytes?n={size}") as r:
            got = sum([len(chunk) async for chunk in r.content.iter_any()])
        down = time.perf_counter() - start
        assert got == size, got
        start = time.perf_counter()
        headers = {"Content-Length": str(size)}
        async with s.post(f"{proxy}/upload", data=_zeros(size), headers=headers) as r:
            assert (await r.json())["size"] == size
        up = time.perf_counter() - start
    print(f"{vm}: GET {_ms(gets)}; WebSocket echo {_ms(echoes)}")
    print(f"{vm}: download {size / down / 1e6:.1f} MB/s, upload {size / up / 1e6:.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--mib", type=int, default=32)
    args = parser.parse_args()
    build_guest()
    tmp = Path(tempfile.mkdtemp(prefix="volant-bench-proxy-"))
    settings = {"runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img")}
    try:
        with netns() as ns:
            daemon = start_daemon(ns, tmp, settings, plugins=())
            try:
                install_webtest(daemon, tmp, {"web": "webtest", "quiet": "webquiet"})
                sock = daemon.api.removeprefix("unix:")
                for vm in ("web", "quiet"):
                    asyncio.run(measure(sock, vm, args.runs, args.mib))
            finally:
                stop_daemon(daemon)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
