"""Create latency through volantd vs QEMU bare in a scope, and guest boot-to-HTTP under TCG.

Runs volantd.service under a real systemd in a sysbox (no host network is touched). Create
latency is the REST round trip of POST /api/v1/vms, which returns once the hypervisor answers
on its API socket inside its scope; guests start paused so guest boot is excluded and the
numbers are not skewed by TCG eating the CPUs. Usage: python -m bench.create_latency [N]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from scripts.sysbox import Sysbox
from scripts.volantbox import ROOT, VENV_BIN, VolantBox
from tests.integration.daemon import build_guest


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{label:<44} n={len(ms):<3} p50={pct(ms, 0.5):7.1f} ms  p95={pct(ms, 0.95):7.1f} ms"
        f"  mean={statistics.mean(ms):7.1f} ms"
    )


def create_latencies(vb: VolantBox, count: int) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        reply = vb.api(
            "POST", "/api/v1/vms", {"name": f"lat{n}", "plugin": "demo", "memory_mb": 96}
        )
        times.append(time.perf_counter() - started)
        assert reply.status == 201, reply
        assert vb.api("DELETE", f"/api/v1/vms/lat{n}").status == 204
    return times


def curl_floor(vb: VolantBox, count: int) -> list[float]:
    """What one curl through the sandbox costs (subtracted from nothing; printed for scale)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        vb.api("GET", "/healthz")
        times.append(time.perf_counter() - started)
    return times


def boot_to_http(vb: VolantBox, count: int) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        vm = vb.api(
            "POST", "/api/v1/vms", {"name": f"boot{n}", "plugin": "demo", "memory_mb": 192}
        ).body
        vb.guest_answer(vm["ip_address"], timeout=120)
        times.append(time.perf_counter() - started)
        vb.api("DELETE", f"/api/v1/vms/boot{n}")
    return times


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    build_guest()
    with Sysbox() as box:
        vb = VolantBox(box)
        vb.install({"runtime.start_paused": True})
        created = create_latencies(vb, count)
        floor = curl_floor(vb, count)
        bare_out = box.run(
            [str(VENV_BIN / "python"), "-m", "bench.bare_scope", str(count)],
            check=False,
            timeout=300,
            cwd=str(ROOT),
        )
        if bare_out.returncode != 0:
            raise SystemExit(f"bare scope bench failed: {bare_out.stderr}")
        bare = json.loads(bare_out.stdout)
        vb.sh("systemctl stop volantd")
        vb.install({"runtime.start_paused": False})
        booted = boot_to_http(vb, max(3, count // 3))
    print(f"\nVolant create latency bench ({ROOT.name}, QEMU TCG, guests paused for create)")
    summary("create via REST until hypervisor ready", created)
    summary("bare systemd-run --scope qemu until QMP", bare)
    summary("one curl round trip in the sandbox (scale)", floor)
    ratio = pct(created, 0.5) / pct(bare, 0.5)
    print(f"{'ratio create/bare (p50)':<44} {ratio:.2f}x")
    summary("guest boot: create request to HTTP answer", booted)


if __name__ == "__main__":
    main()
