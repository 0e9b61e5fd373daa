"""Published ports: the short form and its rules, overlaps, the manifest's default list, the
store's column (a real SQLite file), the nftables text, setup's drift check and volar's cells.

The rules themselves run against a real kernel in tests/integration/test_published_ports.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from volant.cli.output import ports_cell
from volant.engine.faults import STEPS
from volant.model import (
    ANY_ADDRESS,
    InvalidArgument,
    PortMapping,
    Protocol,
    VMSpec,
    mapping_from,
    parse_publish,
    validate_publish,
)
from volant.model.publish import PUBLISH_PATTERN
from volant.network.ports import chains_text, rules_text
from volant.plugins.manifest import validate_document
from volant.setup.nft import setup_chains, table_text
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

SUBNET = IPv4Network("192.168.127.0/24")


@pytest.mark.parametrize(
    ("text", "mapping"),
    [
        ("8080:80", PortMapping(8080, 80)),
        ("8080:80/tcp", PortMapping(8080, 80)),
        ("53:53/udp", PortMapping(53, 53, Protocol.UDP)),
        ("127.0.0.1:5432:5432", PortMapping(5432, 5432, host_addr="127.0.0.1")),
        ("1:65535", PortMapping(1, 65535)),
        ("0.0.0.0:80:80", PortMapping(80, 80)),
    ],
)
def test_the_short_form(text: str, mapping: PortMapping) -> None:
    assert parse_publish(text) == mapping
    assert parse_publish(str(mapping)) == mapping


def test_the_canonical_text_leaves_out_every_address() -> None:
    assert str(parse_publish("8080:80")) == "8080:80/tcp"
    assert str(parse_publish("10.0.0.1:53:53/udp")) == "10.0.0.1:53:53/udp"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("8080", "not a published port"),
        ("a:80", "not a published port"),
        ("0:80", "host port 0"),
        ("80:70000", "VM port 70000"),
        ("80:80/sctp", "neither tcp nor udp"),
        ("1.2.3:80:80", "not an IPv4 address"),
        ("300.1.1.1:80:80", "not an IPv4 address"),
        ("::1:80:80", "not a published port"),
        ("", "not a published port"),
        (" 80:80", "not a published port"),
        ("080:80", "leading zeros"),
    ],
)
def test_bad_forms_name_the_field_and_the_rule(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_publish([text])
    assert words in err.value.message
    assert err.value.field == "publish[0]"
    assert "HOST_PORT:VM_PORT" in err.value.hint


@pytest.mark.parametrize(
    "text",
    ["8080:80", "65535:1/udp", "255.255.255.255:1:1", "0:1", "65536:1", "1:1/TCP", "1.2.3.04:1:1",
     "010:1", "256.1.1.1:1:1", "1:1/", "99999:1"],
)  # fmt: skip
def test_the_schema_pattern_takes_what_the_parser_takes(text: str) -> None:
    """JSON Schema documents (REST, MCP, manifests) say exactly what the engine accepts."""
    try:
        parse_publish(text)
        parsed = True
    except InvalidArgument:
        parsed = False
    assert bool(re.fullmatch(PUBLISH_PATTERN, text)) is parsed


def test_the_object_form() -> None:
    assert mapping_from({"host_port": 8080, "vm_port": 80}) == PortMapping(8080, 80)
    full = {"host_addr": "127.0.0.1", "host_port": 53, "vm_port": 5353, "proto": "udp"}
    assert mapping_from(full) == PortMapping(53, 5353, Protocol.UDP, "127.0.0.1")
    assert mapping_from(full).to_dict() == full
    for bad in ({"host_port": 1}, {"host_port": True, "vm_port": 1}, {"x": 1}, 7):
        with pytest.raises(InvalidArgument):
            mapping_from(bad)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("8080:80", "8080:81", True),  # the same host port, whatever the VM port
        ("8080:80", "8081:80", False),
        ("8080:80", "8080:80/udp", False),
        ("127.0.0.1:8080:80", "8080:80", True),  # 0.0.0.0 overlaps every address
        ("127.0.0.1:8080:80", "10.0.0.1:8080:80", False),
        ("10.0.0.1:8080:80", "10.0.0.1:8080:90", True),
    ],
)
def test_overlaps(a: str, b: str, overlap: bool) -> None:
    assert parse_publish(a).overlaps(parse_publish(b)) is overlap
    assert parse_publish(b).overlaps(parse_publish(a)) is overlap


def test_a_list_takes_each_host_port_once() -> None:
    assert len(validate_publish(["8080:80", "8080:80/udp", "127.0.0.1:9:9"])) == 3
    with pytest.raises(InvalidArgument) as err:
        validate_publish(["127.0.0.1:8080:80", "8080:81"])
    assert err.value.field == "publish[1]"
    assert "same host port" in err.value.message


def manifest(**network: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "web",
        "version": "1",
        "runtime": "web",
        "resources": {"cpu_cores": 1, "memory_mb": 128},
        "workload": {"type": "process", "entrypoint": ["/bin/true"]},
        "initramfs": {"path": "x.cpio", "checksum": "sha256:" + "0" * 64},
        "network": {"mode": "bridged", **network},
    }


def test_a_manifest_names_the_default_list() -> None:
    assert validate_document(manifest()).publish == ()
    doc = validate_document(manifest(publish=["8080:80", "127.0.0.1:53:53/udp"]))
    assert doc.publish == (PortMapping(8080, 80), PortMapping(53, 53, Protocol.UDP, "127.0.0.1"))
    with pytest.raises(InvalidArgument) as err:
        validate_document(manifest(publish=["80"]))
    assert "network.publish" in str(err.value.field or err.value.message)
    with pytest.raises(InvalidArgument) as err:
        validate_document(manifest(publish=["80:80", "80:81"]))
    assert err.value.field == "network.publish[1]"


def test_a_network_less_plugin_publishes_nothing() -> None:
    doc = manifest(publish=["8080:80"])
    doc["network"]["mode"] = "vsock"
    with pytest.raises(InvalidArgument) as err:
        validate_document(doc)
    assert err.value.field == "network.publish"
    assert "without a network card" in err.value.message


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "state.db")
    await store.add_plugin("{}", "web", "1.0", "web", "sha256:" + "0" * 64)
    try:
        yield store
    finally:
        await store.close()


async def test_the_store_keeps_a_vms_ports(store: SqliteStore, tmp_path: Path) -> None:
    ports = (PortMapping(8080, 80), PortMapping(53, 53, Protocol.UDP, "127.0.0.1"))
    spec = VMSpec("web", "web", cpu_cores=1, memory_mb=128, publish=ports)
    vm = await store.create_vm(
        spec, runtime="qemu", unit="", mac_for=lambda *_: "02:56:00:00:00:01", lease_ip=False
    )
    assert vm.publish == ports
    assert (await store.get_vm("web")).to_dict()["publish"] == [
        "8080:80/tcp",
        "127.0.0.1:53:53/udp",
    ]
    plain = VMSpec("plain", "web", cpu_cores=1, memory_mb=128)
    vm = await store.create_vm(
        plain, runtime="qemu", unit="", mac_for=lambda *_: "02:56:00:00:00:02", lease_ip=False
    )
    assert vm.publish == ()


def test_rules_carry_the_vms_name() -> None:
    text = rules_text(
        "web",
        "192.168.127.2",
        [PortMapping(8080, 80), PortMapping(53, 5353, Protocol.UDP, "10.0.0.1")],
    )
    assert text.splitlines() == [
        "add rule inet volant publish_prerouting fib daddr type local tcp dport 8080 "
        'dnat ip to 192.168.127.2:80 comment "vm:web"',
        "add rule inet volant publish_output fib daddr type local tcp dport 8080 "
        'dnat ip to 192.168.127.2:80 comment "vm:web"',
        "add rule inet volant publish_prerouting ip daddr 10.0.0.1 udp dport 53 "
        'dnat ip to 192.168.127.2:5353 comment "vm:web"',
        "add rule inet volant publish_output ip daddr 10.0.0.1 udp dport 53 "
        'dnat ip to 192.168.127.2:5353 comment "vm:web"',
    ]


def test_the_chains_masquerade_hairpin_and_loopback_and_guard_loopback() -> None:
    text = chains_text("vbr0", SUBNET)
    assert text.startswith("add table inet volant\n")
    assert "ct status dnat ip saddr 127.0.0.0/8 masquerade" in text
    assert 'ct status dnat ip saddr 192.168.127.0/24 oifname "vbr0" masquerade' in text
    assert 'iifname != "lo" ip daddr 127.0.0.0/8 drop' in text
    # Setup's forward chain lets DNATed connections through before it refuses new ones.
    table = table_text("vbr0", SUBNET)
    assert table.index("ct status dnat accept") < table.index('oifname "vbr0" reject')


def test_setups_drift_check_leaves_volantds_chains_out() -> None:
    setup = table_text("vbr0", SUBNET, 7777)
    added = (
        setup.removesuffix("}\n")
        + "\n\tchain publish_prerouting {\n"
        + "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        + '\t\tfib daddr type local tcp dport 8080 dnat ip to 192.168.127.2:80 comment "vm:web"\n'
        + "\t}\n\n\tchain publish_filter {\n"
        + "\t\ttype filter hook prerouting priority raw; policy accept;\n\t}\n}\n"
    )
    assert setup_chains(added) == setup
    assert setup_chains(setup) == setup
    assert setup_chains(setup.replace("reject", "accept")) != setup


def test_volar_shows_ports_compactly() -> None:
    assert ports_cell([]) == "-"
    assert ports_cell(["8080:80/tcp", "53:53/udp"]) == "8080:80,53:53/udp"
    assert ports_cell(["1:1/tcp", "2:2/tcp", "3:3/tcp", "4:4/tcp"]) == "1:1,2:2,+2"
    assert ports_cell(["1:1/tcp", "2:2/tcp", "3:3/tcp"], shown=3) == "1:1,2:2,3:3"


def test_every_launch_passes_the_published_boundary() -> None:
    for verb in ("create", "start", "restart"):
        steps = STEPS[verb]
        assert steps.index("ready") < steps.index("published") < steps.index("running")


def test_any_address_is_written_out() -> None:
    assert PortMapping(1, 1).host_addr == ANY_ADDRESS == "0.0.0.0"
    assert json.dumps(PortMapping(1, 2).to_dict())
