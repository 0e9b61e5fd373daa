"""Published ports end to end: a real volantd in its namespace, a real guest, real nftables.

The test guest (busybox) answers HTTP on port 8080 with its name; VM `web` publishes it on the
host's port 9080. Two clients reach it: an "outside machine" (a namespace of its own, joined to
volantd's by a veth pair, routing to the host's veth address) and a client on the host itself
(in volantd's namespace, at 127.0.0.1 and at the host's veth address). The rules exist exactly
while the VM runs, come back after a volantd restart whose table was replaced (as
volantd.service's ExecStartPre does), and a port that a VM or a host process holds is a 409.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import (
    Daemon,
    build_guest,
    netns,
    raw,
    start_daemon,
    stop_daemon,
    wait_status,
)

pytestmark = pytest.mark.integration

HOST_ADDR, OUTSIDE_ADDR = "10.77.0.1", "10.77.0.2"


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def world(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """volantd in its namespace, routing (ip_forward) like a host after `volar setup`, and an
    outside namespace on a veth pair: (daemon, outside namespace)."""
    with netns() as ns, netns() as outside:
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "-n", ns, "link", "add", "vo-host", "type", "veth", "peer", "vo-out",
            "netns", outside)  # fmt: skip
        run("ip", "-n", ns, "addr", "add", f"{HOST_ADDR}/24", "dev", "vo-host")
        run("ip", "-n", ns, "link", "set", "vo-host", "up")
        run("ip", "-n", outside, "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "vo-out")
        run("ip", "-n", outside, "link", "set", "vo-out", "up")
        tmp = tmp_path_factory.mktemp("volantd")
        holder = [start_daemon(ns, tmp)]
        try:
            yield holder[0], outside
        finally:
            stop_daemon(holder[0])


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def curl(ns: str, url: str, *, timeout: float = 60) -> str:
    """GET url from namespace ns, retrying while the guest's server comes up."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "3", url],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout:
            return proc.stdout
        last = proc.stderr
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer from {ns} within {timeout}s: {last}")


def unreachable(ns: str, url: str) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "2", url],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode != 0


def tagged_rules(daemon: Daemon) -> dict[str, list[str]]:
    """The publish chains' rules by the VM named in their comment."""
    rules: dict[str, list[str]] = {}
    for chain in ("publish_prerouting", "publish_output"):
        proc = daemon.in_ns("nft", "-j", "list", "chain", "inet", "volant", chain)
        if proc.returncode != 0:
            continue
        for item in json.loads(proc.stdout)["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment", "").startswith("vm:"):
                rules.setdefault(rule["comment"][3:], []).append(chain)
    return rules


def test_a_published_port_reaches_the_guest_while_it_runs(world: tuple[Daemon, str]) -> None:
    daemon, outside = world
    status, _, vm = raw(
        daemon, "POST", "/api/v1/vms", {"name": "web", "plugin": "demo", "publish": ["9080:8080"]}
    )
    assert status == 201, vm
    assert vm["publish"] == ["9080:8080/tcp"]
    assert tagged_rules(daemon) == {"web": ["publish_prerouting", "publish_output"]}
    # An outside machine, through the host's address on its network.
    assert "web" in curl(outside, f"http://{HOST_ADDR}:9080/")
    # Clients on the host itself: loopback and the host's own addresses.
    assert "web" in curl(daemon.ns, "http://127.0.0.1:9080/")
    assert "web" in curl(daemon.ns, f"http://{HOST_ADDR}:9080/")
    assert "web" in curl(daemon.ns, "http://192.168.127.1:9080/")
    listed = daemon.volar("vms", "list")
    assert "PORTS" in listed.stdout, listed
    assert "9080:8080" in listed.stdout, listed
    assert "publish:" in daemon.volar("vms", "get", "web").stdout

    daemon.call(lambda c: c.stop_vm("web"))
    assert tagged_rules(daemon) == {}
    assert unreachable(outside, f"http://{HOST_ADDR}:9080/")

    daemon.call(lambda c: c.start_vm("web"))
    assert "web" in curl(outside, f"http://{HOST_ADDR}:9080/")

    daemon.call(lambda c: c.delete_vm("web"))
    assert tagged_rules(daemon) == {}


def test_a_taken_port_is_409_naming_its_holder(world: tuple[Daemon, str]) -> None:
    daemon, _ = world
    status, _, vm = raw(
        daemon, "POST", "/api/v1/vms", {"name": "first", "plugin": "demo", "publish": ["9081:8080"]}
    )
    assert status == 201, vm
    try:
        body = {"name": "second", "plugin": "demo", "publish": [{"host_port": 9081, "vm_port": 80}]}
        status, _, problem = raw(daemon, "POST", "/api/v1/vms", body)
        assert (status, problem["code"]) == (409, "Conflict"), problem
        assert "'first'" in problem["detail"]
        assert [v["name"] for v in daemon.call(lambda c: c.list_vms())] == ["first"]

        with listener(daemon, 9082) as pid:
            body = {"name": "second", "plugin": "demo", "publish": ["9082:8080"]}
            status, _, problem = raw(daemon, "POST", "/api/v1/vms", body)
            assert (status, problem["code"]) == (409, "Conflict"), problem
            assert f"pid {pid}" in problem["detail"]

        status, _, problem = raw(
            daemon, "POST", "/api/v1/vms", {"name": "x", "plugin": "demo", "publish": ["1:2:3"]}
        )
        assert (status, problem["code"]) == (400, "InvalidArgument"), problem
        status, _, problem = raw(
            daemon,
            "POST",
            "/api/v1/vms",
            {"name": "x", "plugin": "demo", "publish": ["10.9.9.9:9083:80"]},
        )
        assert (status, problem["code"]) == (400, "InvalidArgument"), problem
        assert "not an address of this host" in problem["detail"]
    finally:
        daemon.call(lambda c: c.delete_vm("first"))


@contextlib.contextmanager
def listener(daemon: Daemon, port: int) -> Iterator[int]:
    """A host process listening on port in volantd's namespace; its pid."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", daemon.ns, "python3", "-c",
         "import socket,time;s=socket.socket();"
         "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
         f"s.bind(('0.0.0.0',{port}));s.listen();print(flush=True);time.sleep(600)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_rules_come_back_after_a_restart_that_replaced_the_table(
    world: tuple[Daemon, str],
) -> None:
    daemon, outside = world
    status, _, vm = raw(
        daemon, "POST", "/api/v1/vms", {"name": "keep", "plugin": "demo", "publish": ["9084:8080"]}
    )
    assert status == 201, vm
    stop_daemon(daemon, delete_vms=False)
    # What volantd.service's ExecStartPre does with setup's file: the table is new.
    assert daemon.in_ns("nft", "delete", "table", "inet", "volant").returncode == 0
    again = start_daemon(daemon.ns, daemon.tmp)
    daemon.proc, daemon.log = again.proc, again.log
    assert wait_status(daemon, "keep", "running")["publish"] == ["9084:8080/tcp"]
    assert tagged_rules(daemon) == {"keep": ["publish_prerouting", "publish_output"]}
    assert "keep" in curl(outside, f"http://{HOST_ADDR}:9084/")
    events = daemon.volar("events", "--type", "HOST_REPAIRED", "--since", "0", "--no-follow")
    assert "restored" in events.stdout, events
    daemon.call(lambda c: c.delete_vm("keep"))
    assert tagged_rules(daemon) == {}


def test_a_dhcp_guest_publishes_its_ports_once_its_lease_is_learned(
    world: tuple[Daemon, str],
) -> None:
    daemon, outside = world
    daemon.install_plugin("demodhcp", network={"mode": "dhcp"})
    body = {"name": "dyn", "plugin": "demodhcp", "publish": ["9086:8080"]}
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", body)
    assert status == 201, vm
    deadline = time.monotonic() + 120
    while "dyn" not in tagged_rules(daemon):
        assert time.monotonic() < deadline, "no rules once the lease came"
        time.sleep(0.5)
    assert daemon.call(lambda c: c.get_vm("dyn"))["ip_address"].startswith("192.168.127.")
    assert "dyn" in curl(outside, f"http://{HOST_ADDR}:9086/")
    daemon.call(lambda c: c.delete_vm("dyn"))
    assert tagged_rules(daemon) == {}
