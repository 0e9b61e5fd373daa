"""volantd's dnsmasq command line and files (volant.network.dnsmasq) against the real dnsmasq
and a real DHCP client (busybox udhcpc), without volantd: a static guest's address inside the
DHCP range, reserved in the dhcp-hosts file, is never offered to another guest."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.integration.daemon import netns
from volant.network import dnsmasq
from volant.network.dnsmasq import Plan

pytestmark = pytest.mark.integration

GUEST_MAC = "02:56:00:00:00:aa"
OTHER_MAC = "02:56:00:00:00:bb"


def ns(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], capture_output=True, text=True, check=False
    )


def ask(guest: str) -> str:
    """udhcpc's output for one try (three discovers, three seconds apart)."""
    proc = ns(guest, "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-t", "3", "-s", "/bin/true")
    return proc.stdout + proc.stderr


def test_a_reserved_address_is_never_offered_to_another_guest(tmp_path: Path) -> None:
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq-base is not installed (make deps installs it)")
    # A /29: its DHCP range is one address, .6, reserved here for another MAC.
    plan = Plan(
        "vbr0",
        IPv4Network("10.66.0.0/29"),
        IPv4Address("10.66.0.1"),
        "vm.internal",
        tmp_path / "run",
        tmp_path / "leases",
    )
    plan.run_dir.mkdir()
    plan.hosts_file.write_text(dnsmasq.hosts_text([], plan.domain))
    with netns() as host, netns() as guest:
        for argv in (
            ["ip", "-n", host, "link", "add", "vbr0", "type", "bridge"],
            ["ip", "-n", host, "addr", "add", "10.66.0.1/29", "dev", "vbr0"],
            ["ip", "-n", host, "link", "set", "vbr0", "up"],
            ["ip", "-n", host, "link", "add", "v0", "type", "veth", "peer", "eth0", "netns", guest],
            ["ip", "-n", host, "link", "set", "v0", "master", "vbr0", "up"],
            ["ip", "-n", guest, "link", "set", "eth0", "address", GUEST_MAC, "up"],
        ):
            subprocess.run(argv, check=True)
        plan.dhcp_hosts_file.write_text(dnsmasq.dhcp_hosts_text([(OTHER_MAC, "10.66.0.6")]))
        server = subprocess.Popen(
            ["ip", "netns", "exec", host, *dnsmasq.command(plan)],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "no lease" in ask(guest)
            # Without the reservation the same guest gets that address.
            plan.dhcp_hosts_file.write_text("")
            server.send_signal(1)  # SIGHUP: dnsmasq reads its files again
            assert "lease of 10.66.0.6 obtained" in ask(guest)
        finally:
            server.terminate()
            _, log = server.communicate(timeout=10)
        assert f"DHCPDISCOVER(vbr0) {GUEST_MAC} no address available" in log
