"""The walking skeleton end to end under a real systemd: volantd.service, scopes, QEMU guests.

Everything runs inside a sysbox (its own pid/mount/net namespaces over a tmpfs overlay of /):
the bridge, the taps and the guests never touch the host's network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import VolantBox
from tests.integration.daemon import build_guest

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def volantd(sysbox: Sysbox) -> Iterator[VolantBox]:
    build_guest()
    vb = VolantBox(sysbox)
    vb.install(plugins=("demo", "caddy", "postgres"))
    yield vb
    vb.run("systemctl", "stop", "volantd")


def test_daemon_reports_systemd_supervisor(volantd: VolantBox) -> None:
    status = volantd.api("GET", "/api/v1/system/status").body
    assert status["supervisor"] == "systemd"
    assert volantd.sh("systemctl is-active volantd").strip() == "active"
    assert "supervisor systemd" in volantd.journal()


def test_two_guests_answer_then_crash_and_delete(volantd: VolantBox) -> None:
    reply = volantd.api("POST", "/api/v1/vms", {"name": "web", "plugin": "caddy"})
    assert reply.status == 201, reply
    web = reply.body
    proc = volantd.volar("vms", "create", "db", "--plugin", "postgres", "--json")
    assert proc.returncode == 0, proc.stderr
    db = json.loads(proc.stdout)
    assert (web["ip_address"], db["ip_address"]) == ("192.168.127.2", "192.168.127.3")

    for vm, plugin in ((web, "caddy"), (db, "postgres")):
        answer = volantd.guest_answer(vm["ip_address"])
        assert vm["name"] in answer
        assert plugin in answer
        unit = f"volant-vm-{vm['name']}.scope"
        assert vm["unit"] == unit
        props = volantd.scope_show(unit, "ActiveState", "Slice")
        assert props == {"ActiveState": "active", "Slice": "volant.slice"}
        pids = volantd.scope_pids(unit)
        assert vm["pid"] in pids
        argv0 = volantd.sh(f"tr '\\0' '\\n' < /proc/{vm['pid']}/cmdline | head -n1").strip()
        assert argv0.split("/")[-1].startswith("qemu-system"), argv0
        assert "qemu-system" in volantd.sh(f"systemctl status --no-pager {unit}")

    volantd.sh(f"kill -9 {web['pid']}")
    crashed = volantd.wait_status("web", "crashed")
    assert crashed["pid"] is None
    events = volantd.api("GET", "/api/v1/events?vm=web").body["events"]
    assert events[-1]["type"] == "VM_CRASHED"
    assert volantd.run("systemctl", "is-active", "volant-vm-web.scope").returncode != 0

    db_tap = volantd.sh("ip -o link show type tun | grep -o 'vt-[0-9a-f]*' | sort").split()
    assert len(db_tap) == 1
    leased_before = volantd.api("GET", "/api/v1/system/status").body["ip_pool_leased"]
    assert volantd.api("DELETE", "/api/v1/vms/db").status == 204
    assert volantd.api("GET", "/api/v1/vms/db").status == 404
    assert volantd.run("ip", "link", "show", db_tap[0]).returncode != 0
    leased_after = volantd.api("GET", "/api/v1/system/status").body["ip_pool_leased"]
    assert leased_after == leased_before - 1
    load = volantd.scope_show("volant-vm-db.scope", "LoadState")["LoadState"]
    assert load == "not-found"
    assert volantd.api("DELETE", "/api/v1/vms/web").status == 204


def test_ten_concurrent_creates_never_share_an_ip(volantd: VolantBox) -> None:
    script = (
        "seq 0 9 | xargs -P 10 -I N curl -sS -o /dev/null -w '%{http_code}\\n' "
        "-H 'Content-Type: application/json' "
        """--data-binary '{"name":"cN","plugin":"demo","memory_mb":96}' """
        "http://127.0.0.1:7777/api/v1/vms"
    )
    codes = volantd.sh(script, timeout=300).split()
    assert codes == ["201"] * 10
    vms = volantd.api("GET", "/api/v1/vms").body["vms"]
    ips = [vm["ip_address"] for vm in vms]
    assert len(vms) == 10
    assert len(set(ips)) == 10
    assert {vm["status"] for vm in vms} == {"running"}
    for vm in vms:
        assert volantd.api("DELETE", f"/api/v1/vms/{vm['name']}").status == 204
    assert volantd.api("GET", "/api/v1/system/status").body["ip_pool_leased"] == 0


def test_stopping_volantd_leaves_guests_running(volantd: VolantBox) -> None:
    vm = volantd.api("POST", "/api/v1/vms", {"name": "keeper", "plugin": "demo"}).body
    assert "keeper" in volantd.guest_answer(vm["ip_address"])
    volantd.sh("systemctl stop volantd")
    assert volantd.sh("systemctl is-active volant-vm-keeper.scope").strip() == "active"
    assert "keeper" in volantd.guest_answer(vm["ip_address"], timeout=10)
    assert volantd.scope_show("volantd.service", "Result")["Result"] == "success"
    volantd.sh("systemctl start volantd")
    volantd.wait_healthy()
    again = volantd.vm("keeper")
    assert (again["status"], again["pid"]) == ("running", vm["pid"])
    started = time.monotonic()
    assert volantd.api("DELETE", "/api/v1/vms/keeper").status == 204
    assert time.monotonic() - started < 30
    assert volantd.run("systemctl", "is-active", "volant-vm-keeper.scope").returncode != 0
