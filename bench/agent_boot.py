"""Print boot-to-workload-healthy of the agent guest against the bare busybox guest, and agent RSS.

Usage: .venv/bin/python -m bench.agent_boot [--runs 3] [--machine auto]

Bare: initramfs.img, launch to the first answer of busybox httpd on :8080. Agent:
agent-initramfs.img with the hello example plugin's hello.cpio appended, launch to `/healthz`
reporting the workload healthy (asked with the agent secret, which a config disk carries as
volantd's does). The agent's VmRSS comes from its /v1/status. Needs root and a
built guest (scripts/build_guest.py); each boot gets its own network namespace, deleted
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.qemu_boot import GUEST, GUEST_IP, TIMEOUT, guest_in_netns
from volant.runtime.cmdline import encode_manifest

ROOT = Path(__file__).resolve().parents[1]
HELLO_DIR = ROOT / "examples" / "plugins" / "hello"
HELLO = json.loads((HELLO_DIR / "manifest.json").read_text())
# Relative artifact paths in a manifest resolve against the manifest's directory.
HELLO_CPIO = HELLO_DIR / HELLO["initramfs"]["path"]
SECRET = "bench-agent-secret"


async def _curl(ns: str, path: str) -> bytes:
    curl = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "curl", "-s", "-m", "0.5",
        "-H", f"X-Volant-Agent-Secret: {SECRET}", f"http://{GUEST_IP}:8080{path}",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await curl.communicate()
    return out


async def _until(ns: str, path: str, want: bytes, start: float) -> float:
    while time.monotonic() - start < TIMEOUT:
        out = await _curl(ns, path)
        if out and want in out:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return float("nan")


async def one_boot(machine: str, agent: bool) -> tuple[float, dict[str, Any]]:
    """(seconds from launch to ready, the agent's /v1/status or {} for the bare guest)."""
    if not agent:
        async with guest_in_netns(machine, plugin="hello") as (ns, _spec, start):
            return await _until(ns, "/", b"volant-guest", start), {}
    image, manifest = "agent-initramfs.img", encode_manifest(HELLO)
    async with guest_in_netns(
        machine, image=image, appended=[HELLO_CPIO], plugin="hello", manifest=manifest,
        agent_secret=SECRET,
    ) as (ns, _spec, start):  # fmt: skip
        seconds = await _until(ns, "/healthz", b'"workload": "healthy"', start)
        status: dict[str, Any] = json.loads(await _curl(ns, "/v1/status") or b"{}")
        return seconds, status


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--machine", default="auto")
    args = parser.parse_args()
    bare: list[float] = []
    agent: list[float] = []
    rss: list[int] = []
    timelines: list[dict[str, float]] = []
    # Interleaved, so a noisy neighbour slows both kinds alike.
    for _ in range(args.runs):
        bare.append((await one_boot(args.machine, agent=False))[0])
        seconds, status = await one_boot(args.machine, agent=True)
        agent.append(seconds)
        if status.get("agent", {}).get("rss_kib"):
            rss.append(status["agent"]["rss_kib"])
        timelines.append({k: v for k, v in status.get("timeline", {}).items() if v is not None})
    for label, times in (("bare busybox, HTTP", bare), ("agent, workload healthy", agent)):
        shown = " ".join(f"{t:.2f}" for t in times)
        print(f"{label:24} median {statistics.median(times):.2f}s  runs: {shown}", flush=True)
    print(f"ratio agent/bare (medians): {statistics.median(agent) / statistics.median(bare):.2f}")
    for key in ("agent_launched", "agent_listening", "workload_healthy"):
        values = [t[key] for t in timelines if key in t]
        if values:
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"in guest, seconds since boot, {key:16} median {statistics.median(values):.2f}"
                  f"  runs: {shown}")  # fmt: skip
    if rss:
        print(f"agent VmRSS in the guest: median {statistics.median(rss):.0f} KiB  runs: {rss}")
    agent_mb = (GUEST / "agent-initramfs.img").stat().st_size / 1e6
    hello_kb = HELLO_CPIO.stat().st_size / 1e3
    bare_mb = (GUEST / "initramfs.img").stat().st_size / 1e6
    print(
        f"initramfs size: agent {agent_mb:.1f} MB + hello {hello_kb:.1f} kB, bare {bare_mb:.1f} MB"
    )


if __name__ == "__main__":
    asyncio.run(main())
