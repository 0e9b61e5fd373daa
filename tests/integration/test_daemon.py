"""volantd end to end without systemd: real SQLite, real QEMU guests, taps in a private netns."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    Daemon,
    build_guest,
    raw,
    running_daemon,
    volar,
    wait_status,
)
from volant.client import ApiError, VolantClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def daemon(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("volantd")) as d:
        yield d


def leased(daemon: Daemon) -> int:
    return int(daemon.call(lambda c: c.system_status())["ip_pool_leased"])


BAD_BODIES: list[tuple[Any, str]] = [
    ({"name": "ok", "plugin": "demo", "colour": "red"}, "unknown field 'colour'"),
    ({"name": "Bad_Name", "plugin": "demo"}, "DNS label"),
    ({"name": "-x", "plugin": "demo"}, "DNS label"),
    ({"name": "ok", "plugin": "demo", "cpu_cores": 0}, "cpu_cores"),
    ({"name": "ok", "plugin": "demo", "cpu_cores": 999}, "cpu_cores"),
    ({"name": "ok", "plugin": "demo", "cpu_cores": "2"}, "cpu_cores"),
    ({"name": "ok", "plugin": "demo", "memory_mb": 1}, "memory_mb"),
    ({"name": "ok", "plugin": "demo", "memory_mb": 10**9}, "memory_mb"),
    ({"name": "ok", "plugin": "demo", "kernel_args": "init=/bin/sh"}, "init"),
    ({"cpu_cores": 1}, "name"),
    ({"name": "ok"}, "plugin: Field required"),
    ({"name": "ok", "plugin": "Not_A_Name"}, "invalid plugin name"),
    ([1, 2], "JSON object"),
    (b"{not json", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_create_is_400_and_leaves_nothing(daemon: Daemon, body: Any, message: str) -> None:
    status, ctype, problem = raw(daemon, "POST", "/api/v1/vms", body)
    assert status == 400
    assert ctype == "application/problem+json"
    assert problem["code"] == "InvalidArgument"
    assert message in problem["detail"]
    assert problem["type"].endswith("/InvalidArgument")
    assert daemon.call(lambda c: c.list_vms()) == []
    assert leased(daemon) == 0


def test_unknown_vm_and_route_are_404(daemon: Daemon) -> None:
    for method, path in [
        ("GET", "/api/v1/vms/nope"),
        ("DELETE", "/api/v1/vms/nope"),
        ("POST", "/api/v1/vms/nope/start"),
        ("GET", "/api/v1/nothing-here"),
    ]:
        status, ctype, problem = raw(daemon, method, path)
        assert (status, ctype, problem["code"]) == (404, "application/problem+json", "NotFound")


def test_health_and_status(daemon: Daemon) -> None:
    assert raw(daemon, "GET", "/healthz")[2] == {"status": "ok"}
    status = daemon.call(lambda c: c.system_status())
    assert status["supervisor"] == "process"
    assert status["hypervisor"] == "qemu"
    assert status["ip_pool_total"] == 190  # .2-.191: the upper quarter is for DHCP


def test_lifecycle_over_rest(daemon: Daemon) -> None:
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": "web", "plugin": "demo"})
    assert status == 201, vm
    assert vm["status"] == "running"
    assert vm["ip_address"] == "192.168.127.2"
    assert vm["mac_address"].startswith("02:56:")
    assert vm["pid"] > 0
    assert "volant.plugin=demo" in vm["kernel_cmdline"]
    answer = daemon.http_get("http://192.168.127.2:8080/")
    assert "web" in answer
    assert "demo" in answer

    status, _, problem = raw(daemon, "POST", "/api/v1/vms", {"name": "web", "plugin": "demo"})
    assert (status, problem["code"]) == (409, "NameTaken")
    status, _, problem = raw(daemon, "POST", "/api/v1/vms/web/start")
    assert (status, problem["code"]) == (409, "InvalidState")
    assert leased(daemon) == 1

    tap = _tap_of(daemon)
    vm = daemon.call(lambda c: c.stop_vm("web"))
    assert (vm["status"], vm["pid"]) == ("stopped", None)
    assert not daemon.link_exists(tap)
    status, _, problem = raw(daemon, "POST", "/api/v1/vms/web/stop")
    assert (status, problem["code"]) == (409, "InvalidState")

    vm = daemon.call(lambda c: c.start_vm("web"))
    assert vm["status"] == "running"
    assert vm["ip_address"] == "192.168.127.2"
    assert "web" in daemon.http_get("http://192.168.127.2:8080/")

    os.kill(vm["pid"], signal.SIGKILL)
    crashed = wait_status(daemon, "web", "crashed")
    assert crashed["pid"] is None
    assert not daemon.link_exists(tap)

    daemon.call(lambda c: c.delete_vm("web"))
    with pytest.raises(ApiError) as err:
        daemon.call(lambda c: c.get_vm("web"))
    assert err.value.status == 404
    assert leased(daemon) == 0
    assert not daemon.link_exists(tap)

    events = daemon.call(lambda c: c.list_events(vm="web"))
    assert [e["type"] for e in events] == [
        "VM_CREATED",
        "VM_STARTING",
        "VM_RUNNING",
        "VM_STOPPED",
        "VM_STARTING",
        "VM_RUNNING",
        "VM_CRASHED",
        "VM_DELETED",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def _tap_of(daemon: Daemon) -> str:
    out = daemon.in_ns("ip", "-o", "link", "show", "type", "tun").stdout
    taps = [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": vt-" in line]
    assert len(taps) == 1, out
    return taps[0]


def test_volar(daemon: Daemon) -> None:
    proc = daemon.volar("vms", "create", "cli1", "--plugin", "demo", "--memory", "160", "--json")
    assert proc.returncode == 0, proc.stderr
    vm = json.loads(proc.stdout)
    assert (vm["name"], vm["status"], vm["memory_mb"]) == ("cli1", "running", 160)

    table = daemon.volar("vms", "list")
    assert table.returncode == 0
    assert "NAME" in table.stdout
    assert "cli1" in table.stdout
    assert "running" in table.stdout
    assert json.loads(daemon.volar("vms", "get", "cli1", "--json").stdout)["name"] == "cli1"

    bad = daemon.volar("vms", "create", "Bad_Name")
    assert bad.returncode == 2  # refused by volar itself, before volantd is asked
    assert bad.stderr.startswith("volar: error: Invalid value for 'NAME': 'Bad_Name' is not a DNS")
    assert "Traceback" not in bad.stderr
    missing = daemon.volar("vms", "get", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("volar: error: no VM named 'nope'")
    usage = daemon.volar("vms", "create")
    assert usage.returncode == 2

    assert daemon.volar("vms", "stop", "cli1").returncode == 0
    assert daemon.volar("vms", "start", "cli1").returncode == 0
    assert daemon.volar("vms", "delete", "cli1").returncode == 0
    assert "cli1" not in daemon.volar("vms", "list").stdout


def test_unreachable_daemon_gives_one_line_and_hint(tmp_path: Path) -> None:
    proc = volar(f"unix:{tmp_path}/none.sock", "vms", "list")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("volar: error: cannot reach volantd")
    assert lines[1].startswith("hint:")


def test_failed_launch_rolls_everything_back(guest: Path, tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"runtime.kernel": str(tmp_path / "missing-vmlinuz")}) as d:
        status, _, problem = raw(d, "POST", "/api/v1/vms", {"name": "doomed", "plugin": "demo"})
        assert status == 502, problem
        assert problem["code"] == "HypervisorFailed"
        assert d.call(lambda c: c.list_vms()) == []
        assert leased(d) == 0
        assert "vt-" not in d.in_ns("ip", "-o", "link").stdout
        types = [e["type"] for e in d.call(lambda c: c.list_events(vm="doomed"))]
        assert types == ["VM_CREATED", "VM_STARTING", "VM_ERROR", "VM_DELETED"]


def test_pool_is_leased_in_numeric_order_and_exhausts(guest: Path, tmp_path: Path) -> None:
    settings = {
        "network.subnet": "10.55.0.0/29",
        "network.host_ip": "10.55.0.1",
        "runtime.start_paused": True,
        "vm.default_memory_mb": 96,
    }
    with running_daemon(tmp_path, settings) as d:
        # .2-.5: the /29's upper quarter (.6) is the DHCP range.
        ips = [
            d.call(lambda c, n=n: c.create_vm({"name": f"p{n}", "plugin": "demo"}))["ip_address"]
            for n in range(4)
        ]
        assert ips == [f"10.55.0.{n}" for n in range(2, 6)]
        status, _, problem = raw(d, "POST", "/api/v1/vms", {"name": "p4", "plugin": "demo"})
        assert (status, problem["code"]) == (409, "PoolExhausted")
        assert len(d.call(lambda c: c.list_vms())) == 4
        d.call(lambda c: c.delete_vm("p1"))
        assert (
            d.call(lambda c: c.create_vm({"name": "again", "plugin": "demo"}))["ip_address"]
            == "10.55.0.3"
        )


def test_concurrent_creates_never_share_an_ip(guest: Path, tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"runtime.start_paused": True, "vm.default_memory_mb": 96}) as d:

        async def burst(client: VolantClient) -> list[dict[str, Any]]:
            return await asyncio.gather(
                *(client.create_vm({"name": f"c{n}", "plugin": "demo"}) for n in range(10))
            )

        vms = d.call(burst)
        ips = [vm["ip_address"] for vm in vms]
        assert len(set(ips)) == 10
        assert {vm["status"] for vm in vms} == {"running"}
        assert leased(d) == 10
