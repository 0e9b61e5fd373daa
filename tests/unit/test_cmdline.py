"""The guest kernel command line and its 2047-character limit."""

from __future__ import annotations

import base64
import gzip
import json
from typing import TypedDict

import pytest

from volant.model import InvalidArgument, NetworkMode
from volant.runtime.cmdline import build_cmdline, decode_manifest, encode_manifest, ip_arg

pytestmark = pytest.mark.unit


class Net(TypedDict, total=False):
    ip: str
    gateway: str
    netmask: str


NET: Net = {
    "ip": "192.168.127.2",
    "gateway": "192.168.127.1",
    "netmask": "255.255.255.0",
}


def test_bridged_line_has_every_part_in_order() -> None:
    line = build_cmdline(
        name="web",
        runtime="caddy",
        plugin="caddy",
        **NET,
        manifest="abc",
        hypervisor_extras=["random.trust_cpu=on", "tsc_early_khz=2445406"],
        extra="  loglevel=4   quiet ",
    )
    assert line == (
        "console=ttyS0 reboot=k panic=1 ip=192.168.127.2::192.168.127.1:255.255.255.0:web:eth0:off "
        "volant.runtime=caddy volant.plugin=caddy volant.manifest=abc "
        "random.trust_cpu=on tsc_early_khz=2445406 loglevel=4 quiet"
    )


def test_prefix_length_netmask_and_missing_gateway() -> None:
    assert ip_arg(NetworkMode.BRIDGED, "a", ip="10.0.0.5", netmask="24") == (
        "ip=10.0.0.5:::255.255.255.0:a:eth0:off"
    )


def test_dhcp_and_vsock_modes() -> None:
    dhcp = build_cmdline(name="web", runtime="r", plugin="p", mode=NetworkMode.DHCP)
    assert "ip=::::web:eth0:dhcp" in dhcp.split()
    # Without an address the guest is told to ask for one.
    assert build_cmdline(name="web", runtime="r", plugin="p") == dhcp
    vsock = build_cmdline(name="web", runtime="r", plugin="p", mode=NetworkMode.VSOCK)
    assert not any(token.startswith("ip=") for token in vsock.split())


@pytest.mark.parametrize(
    "net",
    [
        {"ip": "192.168.127.2"},
        {"ip": "192.168.127.300", "netmask": "24"},
        {"ip": "192.168.127.2", "netmask": "255.0.255.0"},
        {"ip": "192.168.127.2", "netmask": "24", "gateway": "nope"},
    ],
)
def test_bad_network_settings_are_refused(net: Net) -> None:
    with pytest.raises(InvalidArgument):
        build_cmdline(name="web", runtime="r", plugin="p", **net)


@pytest.mark.parametrize(
    ("field", "value"), [("plugin", "a b"), ("runtime", "x\ty"), ("name", "é")]
)
def test_values_that_would_split_the_line_are_refused(field: str, value: str) -> None:
    args = {"name": "web", "runtime": "r", "plugin": "p", **NET, field: value}
    with pytest.raises(InvalidArgument):
        build_cmdline(**args)  # type: ignore[arg-type]


def test_user_args_may_not_override_reserved_keys() -> None:
    for bad in ("ip=1.2.3.4", "volant.plugin=x", "init=/bin/sh"):
        with pytest.raises(InvalidArgument):
            build_cmdline(name="web", runtime="r", plugin="p", **NET, extra=bad)


def test_the_console_shell_is_asked_for_only_when_configured() -> None:
    assert "volant.shell" not in build_cmdline(name="web", runtime="r", plugin="p", **NET)
    line = build_cmdline(name="web", runtime="r", plugin="p", **NET, console_shell=True, extra="q")
    assert line.endswith(" volant.shell=1 q")  # before the user's own arguments
    with pytest.raises(InvalidArgument):
        build_cmdline(name="web", runtime="r", plugin="p", **NET, extra="volant.shell=1")


def test_extras_must_be_single_tokens() -> None:
    with pytest.raises(InvalidArgument):
        build_cmdline(name="web", runtime="r", plugin="p", **NET, hypervisor_extras=["a b"])


def _line_of_length(total: int) -> str:
    base = build_cmdline(name="web", runtime="r", plugin="p", **NET)
    filler = total - len(base) - 1  # one space before the user's args
    return build_cmdline(name="web", runtime="r", plugin="p", **NET, extra="x" * filler)


def test_2047_characters_are_accepted() -> None:
    assert len(_line_of_length(2047)) == 2047


def test_2048_characters_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="2048 characters") as err:
        _line_of_length(2048)
    assert err.value.hint


def test_manifest_round_trip_is_deterministic_base64url_without_padding() -> None:
    manifest = {"name": "caddy", "version": "1.0", "workload": {"entrypoint": ["/caddy", "run"]}}
    encoded = encode_manifest(manifest)
    assert encoded == encode_manifest(dict(reversed(manifest.items())))
    assert not set(encoded) & set("=+/")
    assert decode_manifest(encoded) == manifest
    raw = gzip.decompress(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert json.loads(raw) == manifest


def test_decoding_garbage_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        decode_manifest("not-a-manifest")
    with pytest.raises(InvalidArgument):
        decode_manifest(encode_manifest({}).replace("H", "A", 1)[:-2] + "[]")
