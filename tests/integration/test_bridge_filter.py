"""The nftables tables `volar setup` writes and isolated taps, against the real kernel.

Everything runs in network namespaces the tests create: a "host" one holding the bridge, and,
for the datapath test, two "guest" namespaces wired to the bridge through veth pairs whose host
ends are named like VM taps (vt-…). That shows what the bridge table does to real frames in a
second, where tests/integration/test_guest_isolation.py shows it with real guests.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns_thread import run_in_netns
from volant.network import ISOLATED_GROUP, HostNetwork, bridge_table_text
from volant.network.firewall import FilterCheck, check_bridge_table, warn_without_bridge_table
from volant.setup.nft import ruleset_file, table_text

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="no /dev/net/tun"),
]

SUBNET = IPv4Network("192.168.127.0/24")
ADDRESS = IPv4Interface("192.168.127.1/24")
API_PORT = 7777


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Three fresh namespaces, [host, guest a, guest b]; deleted afterwards with all in them."""
    names = [f"volant-t-{secrets.token_hex(4)}" for _ in range(3)]
    for name in names:
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
    try:
        yield names
    finally:
        for name in names:
            pids = run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                run("kill", "-9", pid, check=False)
            run("ip", "netns", "del", name, check=False)


def load_tables(ns: str, tmp_path: Path) -> None:
    rules = tmp_path / "nftables.conf"
    rules.write_text(ruleset_file("vbr0", SUBNET, API_PORT))
    in_ns(ns, "nft", "-f", str(rules))


async def test_the_tables_load_as_written_and_volantd_checks_them(
    namespaces: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = namespaces[0]
    missing = await run_in_netns(host, check_bridge_table)
    assert not missing.ok
    assert "table bridge volant is missing" in missing.problem
    assert not await run_in_netns(host, warn_without_bridge_table)
    assert "run `volar setup`" in caplog.text

    load_tables(host, tmp_path)
    assert in_ns(host, "nft", "list", "table", "inet", "volant").stdout == table_text(
        "vbr0", SUBNET, API_PORT
    )
    assert in_ns(host, "nft", "list", "table", "bridge", "volant").stdout == bridge_table_text()
    assert await run_in_netns(host, check_bridge_table) == FilterCheck(True)

    in_ns(host, "nft", "flush", "chain", "bridge", "volant", "forward")
    drifted = await run_in_netns(host, check_bridge_table)
    assert (drifted.ok, drifted.problem) == (
        False,
        "nftables table bridge volant differs from what setup writes",
    )


def link(ns: str, name: str) -> dict[str, Any]:
    (info,) = json.loads(run("ip", "-n", ns, "-j", "-d", "link", "show", "dev", name).stdout)
    assert isinstance(info, dict)
    return info


def isolation(info: dict[str, Any]) -> tuple[bool, str]:
    """(bridge port isolated, interface group) as `ip -d link` reports them."""
    slave = info["linkinfo"]["info_slave_data"]
    return bool(slave["isolated"]), str(info.get("group"))


async def test_an_isolated_tap_is_an_isolated_port_in_the_isolated_group(
    namespaces: list[str],
) -> None:
    host = namespaces[0]
    net = HostNetwork("vbr0", ADDRESS, netns=host)
    await net.ensure_bridge()
    tap = net.tap_name("lonely")
    await net.create_tap(tap, "lonely", isolated=True)
    assert isolation(link(host, tap)) == (True, str(ISOLATED_GROUP))
    # A left-over tap reused by a VM of the same name that is not isolated loses both marks.
    await net.create_tap(tap, "lonely")
    assert isolation(link(host, tap)) == (False, "default")
    await net.create_tap(tap, "lonely", isolated=True)
    assert isolation(link(host, tap)) == (True, str(ISOLATED_GROUP))


def wire_guest(host: str, guest: str, port: str, address: str) -> None:
    """A veth from the bridge (host end named like a VM tap) to eth0 in guest."""
    run("ip", "-n", host, "link", "add", port, "type", "veth", "peer", "name", "eth0",
        "netns", guest)  # fmt: skip
    run("ip", "-n", host, "link", "set", port, "master", "vbr0", "up")
    run("ip", "-n", guest, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "-n", guest, "link", "set", "eth0", "up")


def listen(ns: str, address: str, port: int) -> subprocess.Popen[bytes]:
    """A TCP server that answers every connection with its port number."""
    code = (
        "import socket\n"
        f"s = socket.create_server(({address!r}, {port}))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        f"    c.sendall(b'{port}\\n')\n"
        "    c.close()\n"
    )
    return subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code])


def reaches(ns: str, address: str, port: int) -> bool:
    """True when a TCP connection from ns to address:port gets the server's answer in 2 s."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    c = socket.create_connection(({address!r}, {port}), timeout=2)\n"
        "    print(c.recv(16).decode().strip())\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    proc = in_ns(ns, "python3", "-c", code, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == str(port)


async def test_the_bridge_drops_guest_to_guest_agent_traffic_and_isolates_a_group(
    namespaces: list[str], tmp_path: Path
) -> None:
    host, a, b = namespaces
    await HostNetwork("vbr0", ADDRESS, netns=host).ensure_bridge()
    wire_guest(host, a, "vt-aaaaaaaaaa", "192.168.127.2")
    wire_guest(host, b, "vt-bbbbbbbbbb", "192.168.127.3")
    servers = [listen(b, "192.168.127.3", port) for port in (8080, 7000)]
    servers.append(listen(a, "192.168.127.2", 7000))
    servers.append(listen(host, "192.168.127.1", API_PORT))  # volantd's API on the bridge
    try:
        deadline = time.monotonic() + 10
        while not (reaches(a, "192.168.127.3", 7000) and reaches(b, "192.168.127.2", 7000)):
            assert time.monotonic() < deadline, "the test network never came up"
        # Without the tables (no `volar setup`): a guest reaches everything.
        assert reaches(a, "192.168.127.3", 8080)
        assert reaches(a, "192.168.127.1", API_PORT)

        load_tables(host, tmp_path)
        assert not reaches(a, "192.168.127.3", 8080)  # another guest's agent: dropped
        assert reaches(a, "192.168.127.3", 7000)  # its workload: a LAN as before
        assert reaches(b, "192.168.127.2", 7000)
        assert reaches(host, "192.168.127.3", 8080)  # the host reaches every agent
        assert not reaches(a, "192.168.127.1", API_PORT)  # volantd's API: closed to guests

        run("ip", "-n", host, "link", "set", "vt-bbbbbbbbbb", "group", str(ISOLATED_GROUP))
        assert not reaches(a, "192.168.127.3", 7000)  # isolated: not to it ...
        assert not reaches(b, "192.168.127.2", 7000)  # ... nor from it
        assert reaches(host, "192.168.127.3", 7000)  # the host still reaches it
    finally:
        for server in servers:
            server.kill()
            server.wait()
