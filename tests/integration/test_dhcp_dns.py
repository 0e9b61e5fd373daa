"""DHCP and DNS on the bridge: volantd's own dnsmasq with real QEMU guests running the agent.

volantd (child-process supervisor) in a private netns starts dnsmasq on its bridge as a child.
A guest in dhcp mode (the hello example with network.mode dhcp) asks for its address with its
name as hostname; volantd learns the lease from the lease file, records it with a VM_ADDRESS
event, and the health gate, actions and DNS work with it. A static guest resolves the dhcp
one's name and the other way round; the lease is released when its VM is deleted; a volantd
restart adopts the running dnsmasq.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from tests.integration.daemon import (
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    raw,
    running_daemon,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.test_workloads import in_guest
from tests.readme import blocks

pytestmark = pytest.mark.integration

HELLO = ROOT / "examples" / "plugins" / "hello"


def install_hello(daemon: Daemon, directory: Path, name: str, mode: str) -> None:
    """The hello example as plugin name, in network mode mode (unsigned: signatures are not
    required here)."""
    doc = json.loads((HELLO / "manifest.json").read_text())
    doc.update(name=name, network={"mode": mode})
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(HELLO / "hello.cpio", directory / "hello.cpio")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc))
    body = {"manifest": path.read_text(), "origin": path.as_uri()}
    status, _, reply = raw(daemon, "POST", "/api/v1/plugins", body)
    assert status == 201, reply


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    write_plugin_cpio(HELLO)
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "runtime.boot_timeout": 120,
        "runtime.console_shell": True,
    }
    with running_daemon(tmp_path_factory.mktemp("volantd"), settings, plugins=()) as d:
        plugins = tmp_path_factory.mktemp("plugins")
        install_hello(d, plugins, "hello", "bridged")
        install_hello(d, plugins, "hellodhcp", "dhcp")
        yield d


def create(daemon: Daemon, name: str, plugin: str) -> dict[str, Any]:
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": name, "plugin": plugin})
    assert status == 201, vm
    return dict(vm)


def leases(daemon: Daemon) -> str:
    path = daemon.tmp / "state" / "dnsmasq.leases"
    return path.read_text() if path.exists() else ""


def until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_dhcp_guest_is_running_with_its_lease_and_guests_resolve_each_other(
    daemon: Daemon,
) -> None:
    create(daemon, "dh1", "hellodhcp")
    # The health gate waits for the lease, then for the workload, instead of failing.
    vm = wait_status(daemon, "dh1", "running", timeout=240)
    ip = vm["ip_address"]
    assert IPv4Address("192.168.127.192") <= IPv4Address(ip) <= IPv4Address("192.168.127.254")
    assert f"{vm['mac_address']} {ip} dh1 " in leases(daemon)  # the guest sent its name
    events = daemon.call(lambda c: c.request("GET", "/api/v1/events?vm=dh1"))["events"]
    learned = [e for e in events if e["type"] == "VM_ADDRESS"]
    assert [e["payload"]["ip_address"] for e in learned] == [ip]
    assert learned[0]["payload"]["mac"] == vm["mac_address"]
    status, _, greet = raw(daemon, "POST", "/api/v1/vms/dh1/actions/greet")
    assert status == 200, greet
    assert isinstance(daemon.call(lambda c: c.vm_logs("dh1")), list)  # logs reach it too

    create(daemon, "st1", "hello")
    static = wait_status(daemon, "st1", "running", timeout=240)["ip_address"]
    assert IPv4Address(static) < IPv4Address("192.168.127.192")

    # What docs/networking.md shows, in the guests' console shells.
    cat, ask_dh1, ask_st1 = blocks("networking-dns", (ROOT / "docs" / "networking.md").read_text())
    resolv = in_guest(daemon, "st1", cat)
    assert resolv.splitlines() == ["search vm.internal", "nameserver 192.168.127.1"]
    assert ip in in_guest(daemon, "st1", ask_dh1)
    assert in_guest(daemon, "dh1", cat).splitlines() == resolv.splitlines()
    assert static in in_guest(daemon, "dh1", ask_st1)
    # The host's own tools can ask the same server.
    answer = daemon.in_ns("busybox", "nslookup", "dh1.vm.internal", "192.168.127.1")
    assert ip in answer.stdout, answer

    daemon.call(lambda c: c.delete_vm("dh1"))
    assert vm["mac_address"] not in leases(daemon)  # released before the delete answered
    until(
        lambda: "dh1" not in (daemon.tmp / "run" / "dnsmasq" / "hosts").read_text(),
        "dh1 stayed in the hosts file",
    )
    daemon.call(lambda c: c.delete_vm("st1"))


def test_a_restarted_volantd_adopts_the_running_dnsmasq(daemon: Daemon) -> None:
    pid = (daemon.tmp / "run" / "dnsmasq" / "dnsmasq.pid").read_text().strip()
    stop_daemon(daemon, delete_vms=False)
    assert Path(f"/proc/{pid}").exists()  # it outlives volantd: the guests keep DNS and DHCP
    again = start_daemon(daemon.ns, daemon.tmp, plugins=())
    daemon.proc = again.proc
    assert (daemon.tmp / "run" / "dnsmasq" / "dnsmasq.pid").read_text().strip() == pid
    assert "dnsmasq: adopted the running one" in daemon.log_text()
    # One that dies is started again, and answers for the guests again.
    served = daemon.log_text().count("dnsmasq: serving")
    os.kill(int(pid), signal.SIGKILL)
    until(
        lambda: daemon.log_text().count("dnsmasq: serving") > served,
        "dnsmasq stayed dead",
        timeout=30,
    )
    assert "dnsmasq is gone" in daemon.log_text()
    until(
        lambda: (
            daemon.in_ns("busybox", "nslookup", "x.vm.internal", "192.168.127.1").stdout.count(
                "NXDOMAIN"
            )
            > 0
        ),
        "the new dnsmasq does not answer",
    )


def test_another_configuration_restarts_dnsmasq_and_stale_leases_are_released(
    daemon: Daemon,
) -> None:
    pid = (daemon.tmp / "run" / "dnsmasq" / "dnsmasq.pid").read_text().strip()
    stop_daemon(daemon, delete_vms=False)
    # A lease no VM holds: a guest whose VM is gone without its release.
    stale = "0 02:56:de:ad:be:ef 192.168.127.250 gone *\n"
    with (daemon.tmp / "state" / "dnsmasq.leases").open("a") as leases_file:
        leases_file.write(stale)
    again = start_daemon(daemon.ns, daemon.tmp, {"network.domain": "lab.internal"}, plugins=())
    daemon.proc = again.proc
    assert (daemon.tmp / "run" / "dnsmasq" / "dnsmasq.pid").read_text().strip() != pid
    repaired = daemon.call(lambda c: c.list_events(types=["HOST_REPAIRED"]))
    payloads = [e["payload"] for e in repaired]
    assert {"kind": "dnsmasq", "name": "volant-dnsmasq.service", "action": "removed",
            "reason": "it ran with another configuration"} in payloads  # fmt: skip
    assert {"kind": "lease", "name": "192.168.127.250", "action": "removed",
            "reason": "no VM of that MAC"} in payloads  # fmt: skip
    assert "02:56:de:ad:be:ef" not in leases(daemon)
    argv = (daemon.tmp / "run" / "dnsmasq" / "argv").read_text().split("\0")
    assert "--domain=lab.internal" in argv


def test_without_dns_dnsmasq_goes_and_dhcp_mode_is_refused(daemon: Daemon) -> None:
    stop_daemon(daemon, delete_vms=False)
    again = start_daemon(daemon.ns, daemon.tmp, {"network.dns": False}, plugins=())
    daemon.proc = again.proc
    assert not (daemon.tmp / "run" / "dnsmasq" / "dnsmasq.pid").exists()
    repaired = daemon.call(lambda c: c.list_events(types=["HOST_REPAIRED"]))
    assert repaired[-1]["payload"]["reason"] == "network.dns is off"
    status, _, problem = raw(daemon, "POST", "/api/v1/vms", {"name": "dh2", "plugin": "hellodhcp"})
    assert (status, problem["code"], problem["field"]) == (503, "Unavailable", "network.mode")
    assert "needs volantd's dnsmasq" in problem["detail"]
