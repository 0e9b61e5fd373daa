"""SSE delivery latency of VM events to many concurrent subscribers of a real volantd.

Starts volantd (process supervisor, guests paused) in a private network namespace, opens N
subscribers to GET /api/v1/events/vms over its unix socket, spread over a few worker processes
so that one client event loop does not queue them all, then creates and deletes paused VMs (four
events each). Latency is the time from the event's timestamp (taken when volantd persists it,
before it publishes it) to a subscriber having parsed it; both clocks are this host's.
Usage: python -m bench.events_latency [--subscribers 100] [--cycles 25] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp

from tests.integration.daemon import Daemon, build_guest, netns, start_daemon, stop_daemon
from volant.client import VolantClient
from volant.client.sse import SSEParser

STREAM = "http://volantd/api/v1/events/vms"
EVENTS_PER_CYCLE = 4


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(label: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{label:<40} n={len(ms):<6} p50={pct(ms, 0.5):7.2f} ms  p99={pct(ms, 0.99):7.2f} ms"
        f"  max={max(ms):7.2f} ms  mean={statistics.mean(ms):7.2f} ms"
    )


async def _subscriber(
    session: aiohttp.ClientSession, expected: int, ready: asyncio.Event
) -> list[tuple[int, float]]:
    """(event id, latency) of each event this subscriber receives."""
    got: list[tuple[int, float]] = []
    parser = SSEParser()
    async with session.get(STREAM) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            received = time.time()
            for event in parser.feed(chunk):
                ts = datetime.fromisoformat(json.loads(event.data)["ts"]).timestamp()
                got.append((int(event.id), received - ts))
            if parser.last_event_id:
                ready.set()  # the stream's opening `id:` line came: subscribed
            if len(got) >= expected:
                return got
    raise RuntimeError(f"stream ended after {len(got)} of {expected} events")


async def _worker_main(socket_path: str, count: int, expected: int, pipe: Connection) -> None:
    connector = aiohttp.UnixConnector(path=socket_path, limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        readies = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.create_task(_subscriber(session, expected, r)) for r in readies]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
        pipe.send("ready")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 300)
    pipe.send([pair for result in results for pair in result])


def worker(socket_path: str, count: int, expected: int, pipe: Connection) -> None:
    asyncio.run(_worker_main(socket_path, count, expected, pipe))


async def drive(daemon: Daemon, cycles: int) -> None:
    async with VolantClient(daemon.api, timeout=60) as client:
        for n in range(cycles):
            await client.create_vm({"name": f"lat{n}", "plugin": "demo", "memory_mb": 96})
            await client.delete_vm(f"lat{n}")


def measure(daemon: Daemon, subscribers: int, workers: int, cycles: int) -> list[tuple[int, float]]:
    """(event id, latency) for every event at every subscriber."""
    expected = cycles * EVENTS_PER_CYCLE
    sizes = [subscribers // workers + (i < subscribers % workers) for i in range(workers)]
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for size in filter(None, sizes):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=worker, args=(daemon.api.removeprefix("unix:"), size, expected, theirs)
        )
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a subscriber worker did not get ready")
        asyncio.run(drive(daemon, cycles))
        latencies: list[tuple[int, float]] = []
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a subscriber worker did not finish")
            latencies += pipe.recv()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    assert len(latencies) == subscribers * expected, "an event went missing"
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=25)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    build_guest()
    settings = {"runtime.start_paused": True, "events.queue_size": 1024}
    with netns() as ns, tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(ns, Path(tmp), settings)
        try:
            one = measure(daemon, 1, 1, args.cycles)
            many = measure(daemon, args.subscribers, args.workers, args.cycles)
        finally:
            stop_daemon(daemon)
    cpus = os.cpu_count()
    events = args.cycles * EVENTS_PER_CYCLE
    print(f"\nVolant SSE event latency ({cpus} CPUs; {args.cycles} create/delete cycles,")
    print(f"{events} events; subscribers over the unix socket in {args.workers} processes)")
    summary("1 subscriber", [latency for _id, latency in one])
    summary(f"{args.subscribers} subscribers, every delivery", [lat for _id, lat in many])
    slowest: dict[int, float] = {}
    for event_id, latency in many:
        slowest[event_id] = max(latency, slowest.get(event_id, 0.0))
    summary(f"{args.subscribers} subscribers, until the last has it", list(slowest.values()))


if __name__ == "__main__":
    main()
