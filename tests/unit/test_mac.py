"""MAC addresses and tap names derived from VM names: stable, well-formed, short enough."""

from __future__ import annotations

import re

import pytest

from volant.model import InvalidArgument
from volant.network import mac_for, tap_name
from volant.network.names import check_ifname

pytestmark = pytest.mark.unit

MAC_RE = re.compile(r"02:56(:[0-9a-f]{2}){4}")


def test_mac_is_pinned() -> None:
    # Guests and firewall rules remember these: a change here renumbers every VM's MAC.
    assert mac_for("web", "192.168.127.2") == "02:56:43:e4:07:45"
    assert mac_for("web", None) == "02:56:09:8a:ef:f7"


@pytest.mark.parametrize(
    ("name", "ip"), [("web", "192.168.127.2"), ("a", None), ("x" * 63, "10.0.0.254")]
)
def test_mac_format_is_local_unicast(name: str, ip: str | None) -> None:
    mac = mac_for(name, ip)
    assert MAC_RE.fullmatch(mac)
    first = int(mac.split(":")[0], 16)
    assert first & 0b10  # locally administered
    assert not first & 0b01  # unicast


def test_mac_is_deterministic_and_depends_on_name_and_ip() -> None:
    assert mac_for("web", "192.168.127.2") == mac_for("web", "192.168.127.2")
    assert mac_for("web", "192.168.127.2") != mac_for("web", "192.168.127.3")
    assert mac_for("web", "192.168.127.2") != mac_for("db", "192.168.127.2")
    assert mac_for("web", None) == mac_for("web", "")


def test_tap_name_is_pinned_and_short() -> None:
    assert tap_name("web") == "vt-4b5e57f6eb"
    name = tap_name("x" * 63)
    assert re.fullmatch(r"vt-[0-9a-f]{10}", name)
    assert len(name.encode()) <= 15


def test_tap_names_differ_per_vm() -> None:
    names = {tap_name(f"vm{i}") for i in range(1000)}
    assert len(names) == 1000


@pytest.mark.parametrize("bad", ["", "a" * 16, "has space", "a/b", "a:b", "..", "tab\t"])
def test_check_ifname_refuses_what_the_kernel_would(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_ifname(bad)


def test_check_ifname_accepts_the_longest_name() -> None:
    assert check_ifname("a" * 15) == "a" * 15
