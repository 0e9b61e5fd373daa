"""volantd's dnsmasq: address plan, command line (checked by the real dnsmasq), lease-file
parsing, the hosts files, lease learning on a real SQLite store, and helper processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from scripts.testplugin import test_manifest as manifest_doc
from volant.engine.leases import Leases
from volant.engine.ledger import Ledger
from volant.host.helpers import ProcessHelpers, service_properties
from volant.model import Event, EventType, ResourceKind, VirtualMachine, VMSpec
from volant.network import dnsmasq
from volant.network.dnsmasq import DhcpRange, Lease, Plan
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

SUBNET = IPv4Network("192.168.127.0/24")
HOST = IPv4Address("192.168.127.1")


def plan(tmp: Path) -> Plan:
    return Plan("vbr0", SUBNET, HOST, "vm.internal", tmp / "run", tmp / "state" / "leases")


def test_the_dhcp_range_is_the_upper_quarter_of_the_subnet() -> None:
    span = dnsmasq.dhcp_range(SUBNET, HOST)
    assert span == DhcpRange(IPv4Address("192.168.127.192"), IPv4Address("192.168.127.254"))
    assert len(span.addresses()) == 63
    assert str(span) == "192.168.127.192-192.168.127.254"
    assert IPv4Address("192.168.127.191") not in span
    # The host's own address is never handed out.
    top = dnsmasq.dhcp_range(SUBNET, IPv4Address("192.168.127.254"))
    assert top is not None
    assert str(top.last) == "192.168.127.253"
    wide = dnsmasq.dhcp_range(IPv4Network("10.0.0.0/16"), IPv4Address("10.0.0.1"))
    assert wide is not None
    assert (str(wide.first), str(wide.last)) == ("10.0.192.0", "10.0.255.254")
    small = dnsmasq.dhcp_range(IPv4Network("10.0.0.0/29"), IPv4Address("10.0.0.1"))
    assert small is not None
    assert small.addresses() == {IPv4Address("10.0.0.6")}
    assert dnsmasq.dhcp_range(IPv4Network("10.0.0.0/30"), IPv4Address("10.0.0.1")) is None


def test_the_command_line_binds_the_bridge_only_and_dnsmasq_accepts_it(tmp_path: Path) -> None:
    argv = dnsmasq.command(plan(tmp_path))
    for flag in (
        "--interface=vbr0",
        "--bind-interfaces",
        "--except-interface=lo",
        "--conf-file=/dev/null",
        "--keep-in-foreground",
        f"--pid-file={tmp_path}/run/dnsmasq.pid",
        f"--dhcp-leasefile={tmp_path}/state/leases",
        f"--addn-hosts={tmp_path}/run/hosts",
        "--local=/vm.internal/",
        "--dhcp-range=192.168.127.192,192.168.127.254,255.255.255.0,infinite",
        "--dhcp-option=option:dns-server,192.168.127.1",
    ):
        assert flag in argv
    binary = shutil.which("dnsmasq")
    if binary is None:
        pytest.skip("dnsmasq-base is not installed (make deps installs it)")
    check = subprocess.run(
        [binary, *argv[1:], "--test"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    assert "syntax check OK" in check.stderr


def test_lease_files_are_parsed_line_by_line() -> None:
    text = (
        "0 02:56:AA:bb:cc:dd 192.168.127.192 web 01:02:56:aa:bb:cc:dd\n"
        "0 02:56:00:00:00:01 192.168.127.193 * *\n"
        "duid 00:01:00:01:2c:aa\n"
        "0 02:56:00:00:00:02 fe80::1 * *\n"
        "garbage\n"
        "0 not-a-mac 192.168.127.194 x *\n"
    )
    assert dnsmasq.parse_leases(text) == [
        Lease("02:56:aa:bb:cc:dd", "192.168.127.192", "web"),
        Lease("02:56:00:00:00:01", "192.168.127.193", ""),
    ]
    assert dnsmasq.release_command("vbr0", Lease("02:56:00:00:00:01", "192.168.127.193")) == [
        "dhcp_release",
        "vbr0",
        "192.168.127.193",
        "02:56:00:00:00:01",
    ]


def test_hosts_files_name_every_vm_and_reserve_static_addresses_in_the_range() -> None:
    names = [("web", "192.168.127.2"), ("db", "192.168.127.200")]
    assert dnsmasq.hosts_text(names, "vm.internal") == (
        "192.168.127.200 db.vm.internal db\n192.168.127.2 web.vm.internal web\n"
    )
    assert dnsmasq.dhcp_hosts_text([("02:56:00:00:00:09", "192.168.127.200")]) == (
        "02:56:00:00:00:09,192.168.127.200\n"
    )


def test_helper_units_keep_only_network_capabilities() -> None:
    props = dict(service_properties("dnsmasq", ["/usr/sbin/dnsmasq", "-k"]))
    assert props["CapabilityBoundingSet"] == ("t", (1 << 10) | (1 << 12) | (1 << 13))
    assert props["Slice"] == ("s", "volant.slice")
    assert props["ExecStart"] == (
        "a(sasb)",
        [("/usr/sbin/dnsmasq", ["/usr/sbin/dnsmasq", "-k"], False)],
    )


def mac(name: str, ip: str | None) -> str:
    return "02:56:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:4])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "state.db")
    artifact = tmp_path / "demo.cpio"
    artifact.write_bytes(b"x")
    for name, mode in (("demo", "bridged"), ("demodhcp", "dhcp")):
        doc = manifest_doc(name, artifact, network={"mode": mode})
        await store.add_plugin(json.dumps(doc), name, "1.0.0", name, "sha256:" + "0" * 64)
    try:
        yield store
    finally:
        await store.close()


async def create(store: SqliteStore, name: str, plugin: str) -> VirtualMachine:
    manifest = (await store.get_plugin(plugin)).manifest_json
    return await store.create_vm(
        VMSpec(name=name, plugin=plugin, cpu_cores=1, memory_mb=128),
        runtime="qemu",
        unit="",
        mac_for=mac,
        lease_ip=plugin == "demo",
        manifest_json=manifest,
    )


async def test_existing_leases_in_the_dhcp_range_stay_when_the_pool_shrinks(
    store: SqliteStore,
) -> None:
    span = dnsmasq.dhcp_range(SUBNET, HOST)
    assert span is not None
    upper = {IPv4Address(n) for n in range(int(HOST), int(span.first))}
    await store.ensure_pool(SUBNET, upper)  # an old pool whose lowest free address is .192
    old = await create(store, "old", "demo")
    assert old.ip_address == "192.168.127.192"
    assert await store.ensure_pool(SUBNET, {HOST} | span.addresses()) == 190
    assert await store.pool_usage() == (1, 191)  # kept until its VM goes
    assert (await create(store, "new", "demo")).ip_address == "192.168.127.2"
    await store.delete_vm("old")
    assert await store.pool_usage() == (1, 190)


async def test_a_lease_becomes_the_vms_address_its_event_and_its_name(
    store: SqliteStore, tmp_path: Path
) -> None:
    where = plan(tmp_path)
    emitted: list[tuple[EventType, VirtualMachine, dict[str, Any]]] = []

    async def emit(type: EventType, vm: VirtualMachine, **extra: Any) -> Event:
        emitted.append((type, vm, extra))
        return await store.append_event(type, vm.name, extra)

    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)

    leases = Leases(store, Ledger(store), where, emit)
    await store.ensure_pool(SUBNET, {HOST})
    static = await create(store, "web", "demo")
    dhcp = await create(store, "dh", "demodhcp")
    assert dhcp.ip_address is None
    where.lease_file.parent.mkdir(parents=True)
    where.lease_file.write_text(
        f"0 {dhcp.mac} 192.168.127.200 dh *\n0 {static.mac} 192.168.127.201 web *\n"
    )
    await leases.sync(reload)
    got = await store.get_vm("dh")
    assert got.ip_address == "192.168.127.200"
    assert (await store.get_vm("web")).ip_address == static.ip_address  # static stays static
    assert [(t, vm.ip_address, extra) for t, vm, extra in emitted] == [
        (EventType.VM_ADDRESS, "192.168.127.200", {"mac": dhcp.mac})
    ]
    records = [(r.kind, r.name, r.vm) for r in await store.list_resources()]
    assert (ResourceKind.LEASE, "192.168.127.200", "dh") in records
    assert where.hosts_file.read_text() == (
        f"192.168.127.200 dh.vm.internal dh\n{static.ip_address} web.vm.internal web\n"
    )
    assert reloads == [1]
    await leases.sync(reload)  # nothing changed: no event, no reload
    assert len(emitted) == 1
    assert reloads == [1]
    assert (await leases.wait_address(dhcp, 0.1)).ip_address == "192.168.127.200"
    assert await leases.wait_address(static, 0.1) is static


async def test_a_helper_child_is_found_signalled_and_stopped(tmp_path: Path) -> None:
    helpers = ProcessHelpers(owner=str(tmp_path))
    other = ProcessHelpers(owner="someone else")
    await helpers.start("sleeper", ["sleep", "60"], log_path=tmp_path / "sleeper.log")
    try:
        assert await helpers.running("sleeper")
        assert not await other.running("sleeper")  # another daemon's helpers are not ours
        assert not await helpers.running("other")
    finally:
        await helpers.stop("sleeper")
    assert not await helpers.running("sleeper")
    assert not await helpers.signal("sleeper", 1)
    await helpers.close()
    await asyncio.sleep(0)
