"""volantd as a systemd service: restart survival, operator stops, limits and usage, machined,
journal fields and STATUS=, all under a real systemd in a sysbox with three real guests."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from scripts.volantbox import VolantBox
from volant.network.names import tap_name

pytestmark = pytest.mark.system

NAMES = ("alpha", "beta", "gamma")
# Every guest is polled this often while volantd restarts; any failed request fails the test.
POLL = (
    'while [ ! -e /tmp/poll-stop ]; do for ip in "$@"; do '
    'curl -sf --max-time 3 -o /dev/null "http://$ip:8080/" || echo "FAIL $ip"; done; '
    "echo ROUND; sleep 0.2; done; echo DONE"
)


@pytest.fixture(scope="module")
def guests(volantd: VolantBox) -> dict[str, dict[str, Any]]:
    vms = {}
    for name in NAMES:
        reply = volantd.api("POST", "/api/v1/vms", {"name": name, "plugin": "demo", "cpu_cores": 1})
        assert reply.status == 201, reply
        vms[name] = reply.body
    for vm in vms.values():
        assert vm["name"] in volantd.guest_answer(vm["ip_address"])
    return vms


def events(vb: VolantBox, name: str) -> list[dict[str, Any]]:
    return list(vb.api("GET", f"/api/v1/events?vm={name}").body["events"])


def test_limits_usage_status_and_machines(volantd: VolantBox, guests: dict[str, Any]) -> None:
    props = volantd.scope_show(
        "volant-vm-alpha.scope", "CPUQuotaPerSecUSec", "MemoryMax", "TasksMax", "Before"
    )
    memory_max = (192 + 64) * 1024 * 1024  # default 192 MiB guest + 64 MiB headroom
    assert "volantd.service" in props.pop("Before").split()
    assert props == {"CPUQuotaPerSecUSec": "1s", "MemoryMax": str(memory_max), "TasksMax": "256"}
    usage = volantd.vm("alpha")["usage"]
    assert usage["cpu_seconds"] > 0
    assert usage["memory_bytes"] is None  # no memory controller here: never guessed
    total = volantd.api("GET", "/api/v1/system/status").body["usage"]
    assert total["cpu_seconds"] >= usage["cpu_seconds"]

    status = volantd.scope_show("volantd.service", "StatusText")["StatusText"]
    assert status == "3 VMs: 3 running"
    machines = volantd.sh("machinectl list --no-legend --no-pager")
    rows = {line.split()[0]: line.split()[1:3] for line in machines.splitlines() if line}
    assert rows == {name: ["vm", "volant"] for name in NAMES}

    records = [
        json.loads(line)
        for line in volantd.sh("journalctl -u volantd VM=alpha -o json --no-pager").splitlines()
    ]
    assert any(r["MESSAGE"].startswith("VM alpha running") for r in records), records
    assert {r["UNIT"] for r in records} == {"volant-vm-alpha.scope"}
    # OBJECT_SYSTEMD_UNIT puts volantd's lines about a VM into the scope's own journal view.
    assert "VM alpha running" in volantd.journal("volant-vm-alpha.scope")


def test_restart_keeps_every_guest_answering(volantd: VolantBox, guests: dict[str, Any]) -> None:
    ips = [vm["ip_address"] for vm in guests.values()]
    poller = volantd.box.spawn(["/bin/sh", "-c", POLL, "poll", *ips])
    try:
        time.sleep(2)
        volantd.sh("systemctl restart volantd")
        volantd.wait_healthy()
        time.sleep(2)
    finally:
        volantd.sh("touch /tmp/poll-stop")
        output, _ = poller.communicate(timeout=60)
    lines = output.split()
    assert "DONE" in lines
    assert lines.count("ROUND") >= 5, output
    assert "FAIL" not in output, output
    assert volantd.scope_show("volantd.service", "NRestarts")["NRestarts"] == "0"

    for name, vm in guests.items():
        again = volantd.vm(name)
        assert (again["status"], again["pid"]) == ("running", vm["pid"])
        assert f"adopted VM {name}" in volantd.journal(lines=200)
    # Still watched after the restart: a SIGKILL is a crash.
    volantd.sh(f"kill -9 {guests['gamma']['pid']}")
    crashed = volantd.wait_status("gamma", "crashed")
    assert crashed["pid"] is None
    assert events(volantd, "gamma")[-1]["type"] == "VM_CRASHED"
    assert "gamma" not in volantd.sh("machinectl list --no-legend --no-pager")


def test_operator_stop_of_a_scope_is_a_stop(volantd: VolantBox, guests: dict[str, Any]) -> None:
    volantd.sh("systemctl stop volant-vm-beta.scope")
    stopped = volantd.wait_status("beta", "stopped")
    assert stopped["pid"] is None
    last = events(volantd, "beta")[-1]
    assert (last["type"], last["payload"]["reason"]) == ("VM_STOPPED", "scope stopped by systemd")
    assert "beta" not in volantd.sh("machinectl list --no-legend --no-pager")
    status = volantd.scope_show("volantd.service", "StatusText")["StatusText"]
    assert status == "3 VMs: 1 crashed, 1 running, 1 stopped"


def test_scope_gone_while_volantd_down_is_a_crash(
    volantd: VolantBox, guests: dict[str, Any]
) -> None:
    volantd.sh("systemctl stop volantd")
    volantd.sh(f"kill -9 {guests['alpha']['pid']}")
    deadline = time.monotonic() + 30
    while volantd.run("systemctl", "is-active", "volant-vm-alpha.scope").returncode == 0:
        assert time.monotonic() < deadline, "scope outlived its hypervisor"
        time.sleep(0.2)
    volantd.sh("systemctl start volantd")
    volantd.wait_healthy()
    assert volantd.vm("alpha")["status"] == "crashed"
    crashed, repaired = events(volantd, "alpha")[-2:]
    assert (crashed["type"], crashed["payload"]["reason"]) == (
        "VM_CRASHED",
        "hypervisor gone at start",
    )
    # The dead hypervisor's tap was still on the bridge: the start-up repair removed it.
    assert (repaired["type"], repaired["payload"]) == (
        "HOST_REPAIRED",
        {"kind": "tap", "name": tap_name("alpha"), "action": "removed", "reason": "VM not running"},
    )
    for name in NAMES:
        assert volantd.api("DELETE", f"/api/v1/vms/{name}").status == 204
    assert volantd.sh("machinectl list --no-legend --no-pager").strip() == ""
    assert volantd.scope_show("volantd.service", "StatusText")["StatusText"] == "0 VMs"
