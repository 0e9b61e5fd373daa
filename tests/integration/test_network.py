"""HostNetwork against the real kernel, inside a network namespace each test creates.

Nothing here touches the root namespace: every `ip` command runs with `-n <ns>`, and the
namespace (with the bridge and taps in it) is deleted after each test, even when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from volant.engine.ports import Network
from volant.model import Conflict, Unavailable
from volant.network import HostNetwork, mac_for, tap_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="no /dev/net/tun"),
]

ADDRESS = IPv4Interface("192.168.127.1/24")


def ip(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *argv], check=True, capture_output=True, text=True
    ).stdout


def link(ns: str, name: str) -> dict[str, Any] | None:
    """`ip -d link show` of one interface as JSON, or None when it does not exist."""
    proc = subprocess.run(
        ["ip", "-n", ns, "-j", "-d", "link", "show", "dev", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    (info,) = json.loads(proc.stdout)
    assert isinstance(info, dict)
    return info


def addresses(ns: str, name: str) -> list[str]:
    (info,) = json.loads(ip(ns, "-j", "-4", "addr", "show", "dev", name))
    return [f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"]]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"volant-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def net(netns: str) -> HostNetwork:
    return HostNetwork("vbr0", ADDRESS, netns=netns)


def test_satisfies_the_network_port(net: HostNetwork) -> None:
    port: Network = net  # checked by mypy; the assert keeps the name used
    assert port.tap_name("web") == tap_name("web")


async def test_bridge_is_created_with_its_address_and_up(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    info = link(netns, "vbr0")
    assert info is not None
    assert info["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in info["flags"]
    assert addresses(netns, "vbr0") == ["192.168.127.1/24"]


async def test_ensure_bridge_is_idempotent(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    await net.ensure_bridge()
    assert addresses(netns, "vbr0") == ["192.168.127.1/24"]


async def test_ensure_bridge_repairs_a_bare_bridge(net: HostNetwork, netns: str) -> None:
    ip(netns, "link", "add", "vbr0", "type", "bridge")
    await net.ensure_bridge()
    info = link(netns, "vbr0")
    assert info is not None
    assert "UP" in info["flags"]
    assert addresses(netns, "vbr0") == ["192.168.127.1/24"]


async def test_ensure_bridge_refuses_a_non_bridge(net: HostNetwork, netns: str) -> None:
    ip(netns, "tuntap", "add", "vbr0", "mode", "tap")
    with pytest.raises(Conflict, match="not a bridge"):
        await net.ensure_bridge()


async def test_tap_is_created_attached_named_and_up(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    tap = net.tap_name("web")
    assert not await net.tap_exists(tap)
    await net.create_tap(tap, "web")
    info = link(netns, tap)
    assert info is not None
    assert info["linkinfo"]["info_kind"] == "tun"
    assert info["linkinfo"]["info_data"]["type"] == "tap"
    assert info["master"] == "vbr0"
    assert info["ifalias"] == "web"
    assert "UP" in info["flags"]
    assert await net.tap_exists(tap)


async def test_guest_mac_is_accepted_by_the_kernel(net: HostNetwork, netns: str) -> None:
    # The kernel refuses multicast and malformed addresses on an Ethernet device.
    await net.ensure_bridge()
    tap = net.tap_name("web")
    await net.create_tap(tap, "web")
    mac = mac_for("web", "192.168.127.2")
    ip(netns, "link", "set", "dev", tap, "address", mac)
    info = link(netns, tap)
    assert info is not None
    assert info["address"] == mac


async def test_delete_tap_removes_it_and_is_idempotent(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    tap = net.tap_name("web")
    await net.create_tap(tap, "web")
    await net.delete_tap(tap)
    assert link(netns, tap) is None
    assert not await net.tap_exists(tap)
    await net.delete_tap(tap)


async def test_left_over_tap_is_reused(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    tap = net.tap_name("web")
    ip(netns, "tuntap", "add", tap, "mode", "tap")
    await net.create_tap(tap, "web")
    await net.create_tap(tap, "web")
    info = link(netns, tap)
    assert info is not None
    assert (info["master"], info["ifalias"]) == ("vbr0", "web")


async def test_tap_of_another_vm_is_not_taken(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    tap = net.tap_name("web")
    await net.create_tap(tap, "web")
    with pytest.raises(Conflict, match="belongs to VM 'web'"):
        await net.create_tap(tap, "db")
    info = link(netns, tap)
    assert info is not None
    assert info["ifalias"] == "web"


async def test_failure_half_way_removes_the_new_tap(net: HostNetwork, netns: str) -> None:
    await net.ensure_bridge()
    tap = net.tap_name("web")
    # The kernel refuses an alias of 256 bytes or more, after the tap was created.
    with pytest.raises(Unavailable, match=f"cannot create tap {tap}"):
        await net.create_tap(tap, "x" * 300)
    assert link(netns, tap) is None


async def test_tap_needs_the_bridge(net: HostNetwork, netns: str) -> None:
    tap = net.tap_name("web")
    with pytest.raises(Unavailable, match="bridge vbr0 does not exist"):
        await net.create_tap(tap, "web")
    assert link(netns, tap) is None


async def test_delete_refuses_what_is_not_a_tap(net: HostNetwork, netns: str) -> None:
    ip(netns, "link", "add", "vt-0000000000", "type", "bridge")
    with pytest.raises(Conflict, match="not a tap"):
        await net.delete_tap("vt-0000000000")
    assert link(netns, "vt-0000000000") is not None


async def test_missing_namespace_is_not_created() -> None:
    name = f"volant-t-{secrets.token_hex(4)}"
    net = HostNetwork(netns=name)
    with pytest.raises(Unavailable, match="does not exist"):
        await net.tap_exists("vt-0000000000")
    assert not Path("/run/netns", name).exists()
