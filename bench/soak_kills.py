"""Soak: random create, start, stop and delete under volantd.service, SIGKILLed at random moments.

Runs in a sysbox under a real systemd (no host network is touched). Each cycle sends one
random verb for one of a few VM names and, with probability --kill, SIGKILLs volantd at a
random moment while the verb is under way; systemd restarts it. Every --check cycles, and at
the end, the scopes, QEMU processes, taps, machines, run directories, console logs, resource
records and leases must match the store exactly (tests/system/hostcheck.py). volantd's fd count
and RSS are printed before and after, and around a tail of cycles without kills (a fresh daemon
process after every kill says little about leaks on its own).

Guests start paused: QEMU is real, its vCPUs wait, so a cycle costs a second, not a boot.
Usage: python -m bench.soak_kills [--cycles 300] [--kill 0.35] [--tail 60] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from scripts.sysbox import Sysbox
from scripts.volantbox import API, VolantBox
from tests.integration.daemon import build_guest
from tests.system.hostcheck import orphans

NAMES = ("s1", "s2", "s3", "s4")
VERBS = ("create", "start", "stop", "delete")
SETTLING = ("creating", "starting", "stopping")


def request(verb: str, name: str) -> list[str]:
    """The curl argv (run inside the box) for verb on VM name."""
    base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60"]
    if verb == "create":
        body = json.dumps({"name": name, "plugin": "demo", "memory_mb": 96})
        return [*base, "-X", "POST", "-H", "Content-Type: application/json", "--data", body,
                f"{API}/api/v1/vms"]  # fmt: skip
    if verb == "delete":
        return [*base, "-X", "DELETE", f"{API}/api/v1/vms/{name}"]
    return [*base, "-X", "POST", f"{API}/api/v1/vms/{name}/{verb}"]


def main_pid(vb: VolantBox) -> int:
    return int(vb.scope_show("volantd.service", "MainPID")["MainPID"])


def footprint(vb: VolantBox) -> tuple[int, int]:
    """(open fds, RSS in KiB) of volantd."""
    pid = main_pid(vb)
    fds = int(vb.sh(f"ls /proc/{pid}/fd | wc -l"))
    rss = int(vb.sh(f"awk '/^VmRSS:/ {{print $2}}' /proc/{pid}/status"))
    return fds, rss


def vms(vb: VolantBox) -> list[dict[str, Any]]:
    return list(vb.api("GET", "/api/v1/vms").body["vms"])


def settle(vb: VolantBox, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        vb.wait_healthy(60)
        current = vms(vb)
        if not any(vm["status"] in SETTLING for vm in current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"VMs stuck between states: {current}")
        time.sleep(0.3)


def kill(vb: VolantBox) -> None:
    before = int(vb.scope_show("volantd.service", "NRestarts")["NRestarts"])
    vb.sh(f"kill -9 {main_pid(vb)}")
    deadline = time.monotonic() + 60
    while int(vb.scope_show("volantd.service", "NRestarts")["NRestarts"]) == before:
        assert time.monotonic() < deadline, "systemd did not restart volantd"
        time.sleep(0.2)
    vb.wait_healthy(60)


def cycles(
    vb: VolantBox, rng: random.Random, count: int, kill_p: float, check: int
) -> dict[str, int]:
    tally = {"cycles": 0, "kills": 0, "checks": 0, "answers_2xx": 0}
    for n in range(1, count + 1):
        verb, name = rng.choice(VERBS), rng.choice(NAMES)
        proc = vb.box.spawn(request(verb, name))
        if rng.random() < kill_p:
            time.sleep(rng.uniform(0.0, 1.2))
            kill(vb)
            tally["kills"] += 1
        out, _ = proc.communicate(timeout=120)
        tally["answers_2xx"] += out.strip().startswith("2")
        tally["cycles"] += 1
        if n % check == 0 or n == count:
            problems = orphans(vb, settle(vb))
            tally["checks"] += 1
            if problems:
                raise AssertionError(f"after cycle {n} ({verb} {name}): {problems}")
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--kill", type=float, default=0.35, help="chance of a kill per cycle")
    parser.add_argument("--tail", type=int, default=60, help="cycles without kills at the end")
    parser.add_argument("--check", type=int, default=10, help="full host check every N cycles")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    build_guest()
    with Sysbox() as box:
        vb = VolantBox(box)
        vb.install({"runtime.start_paused": True, "runtime.stop_timeout": 3}, plugins=("demo",))
        start = footprint(vb)
        started = time.monotonic()
        soak = cycles(vb, rng, args.cycles, args.kill, args.check)
        soaked = time.monotonic() - started
        tail_start = footprint(vb)
        tail = cycles(vb, rng, args.tail, 0.0, args.check)
        end = footprint(vb)
        restarts = vb.scope_show("volantd.service", "NRestarts")["NRestarts"]
        final = settle(vb)
        problems = orphans(vb, final)
        for vm in final:
            vb.api("DELETE", f"/api/v1/vms/{vm['name']}")
        problems += orphans(vb, vms(vb))
        vb.run("systemctl", "stop", "volantd")
    print(f"seed {seed}")
    print(
        f"random kills: {soak['cycles']} cycles, {soak['kills']} SIGKILLs (systemd restarts"
        f" {restarts}), {soak['checks']} full host checks, {soak['answers_2xx']} 2xx answers,"
        f" {soaked:.0f} s"
    )
    print(f"tail without kills: {tail['cycles']} cycles, {tail['checks']} checks")
    print(f"volantd fds/RSS KiB: first daemon {start[0]}/{start[1]}")
    print(f"volantd fds/RSS KiB: tail start {tail_start[0]}/{tail_start[1]}, end {end[0]}/{end[1]}")
    print(f"leaks: {len(problems)}" + (f" {problems}" if problems else ""))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
