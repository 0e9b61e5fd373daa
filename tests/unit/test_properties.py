"""Property tests (hypothesis) for what callers may send: names, extra kernel arguments and
VM specs, from REST bodies and D-Bus dictionaries alike. Whatever comes in either gets a clear
InvalidArgument or yields values that are safe where they end up."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volant.api.dbus.codec import query_from_dbus, spec_from_dbus
from volant.api.rest.schemas import CreateVMRequest, ListVMsQuery, parse_body, parse_query
from volant.model import InvalidArgument
from volant.model.validate import (
    CMDLINE_MAX,
    RESERVED_KERNEL_KEYS,
    validate_kernel_args,
    validate_name,
)
from volant.network import mac_for
from volant.runtime.cmdline import build_cmdline

pytestmark = pytest.mark.unit
T = TypeVar("T")

LABEL_CHARS = string.ascii_lowercase + string.digits + "-"
labels = st.text(LABEL_CHARS, min_size=1, max_size=63).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def attempt(fn: Callable[..., T], *args: Any) -> tuple[T | None, InvalidArgument | None]:
    """(result, None), or (None, the InvalidArgument it raised)."""
    try:
        return fn(*args), None
    except InvalidArgument as exc:
        return None, exc


def is_label(name: str) -> bool:
    return (
        1 <= len(name) <= 63
        and all(c in LABEL_CHARS for c in name)
        and name[0] != "-"
        and name[-1] != "-"
    )


@given(st.text(max_size=80) | labels)
def test_a_name_is_accepted_exactly_when_it_is_a_dns_label(name: str) -> None:
    if is_label(name):
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidArgument, match="DNS label"):
            validate_name(name)


@given(labels, st.ip_addresses(v=4).map(str) | st.none())
def test_macs_are_locally_administered_unicast_and_stable(name: str, ip: str | None) -> None:
    mac = mac_for(name, ip)
    first = int(mac.split(":")[0], 16)
    assert mac.startswith("02:56:")
    assert first & 0b10  # locally administered
    assert not first & 0b01  # unicast
    assert mac_for(name, ip) == mac


kernel_words = st.sampled_from(
    ["quiet", "loglevel=7", "init=/bin/sh", "volant.plugin=x", "IP=dhcp", "rdinit=/x", "a=b"]
)
kernel_args = st.text(max_size=200) | st.lists(kernel_words, max_size=6).map(" ".join)


@settings(max_examples=300)
@given(kernel_args)
def test_kernel_args_are_refused_or_safe_on_the_command_line(args: str) -> None:
    clean, error = attempt(validate_kernel_args, args)
    if clean is None:
        assert error is not None
        assert error.field == "kernel_args"
        return
    assert all(0x20 <= ord(c) < 0x7F for c in clean)
    for token in clean.split():
        assert not any(token.lower().startswith(key) for key in RESERVED_KERNEL_KEYS)
    try:
        line = build_cmdline(name="vm", runtime="qemu", plugin="demo", ip="10.0.0.2",
                             gateway="10.0.0.1", netmask="255.255.255.0", extra=args)  # fmt: skip
    except InvalidArgument:
        return
    assert len(line) <= CMDLINE_MAX
    assert line.count("volant.plugin=") == 1
    assert line.count(" ip=") == 1


SPEC_FIELDS = ["name", "plugin", "cpu_cores", "memory_mb", "kernel_args", "isolated"]


@given(st.dictionaries(st.sampled_from([*SPEC_FIELDS, "colour"]), json_values))
def test_rest_create_bodies_parse_or_name_the_problem(body: dict[str, Any]) -> None:
    request, error = attempt(parse_body, CreateVMRequest, body)
    if request is None:
        assert error is not None
        assert error.message
        return
    assert set(body) <= set(SPEC_FIELDS)
    assert isinstance(request.name, str)
    assert isinstance(request.plugin, str)
    for value in (request.cpu_cores, request.memory_mb):
        assert value is None or (type(value) is int and value >= 1)
    # Only a JSON boolean isolates: never 1, "true" or null.
    assert request.isolated is body.get("isolated", False)


variants = st.one_of(
    st.tuples(st.just("s"), st.text(max_size=20)),
    st.tuples(st.sampled_from(["i", "u", "x", "t"]), st.integers(0, 2**31)),
    st.tuples(st.just("b"), st.booleans()),
)


@given(st.dictionaries(st.sampled_from([*SPEC_FIELDS, "bogus"]), variants))
def test_dbus_specs_decode_or_name_the_problem(spec: dict[str, tuple[str, Any]]) -> None:
    decoded, error = attempt(spec_from_dbus, spec)
    if decoded is None:
        assert error is not None
        assert error.message
        return
    assert decoded.name == spec["name"][1]
    assert "bogus" not in spec
    # isolated only from a boolean variant ("b"), never from an integer or a string.
    assert decoded.isolated is (spec["isolated"][1] if "isolated" in spec else False)
    if "isolated" in spec:
        assert spec["isolated"][0] == "b"


QUERY_KEYS = ["status", "plugin", "prefix", "sort", "limit", "offset", "api_key", "x"]


@given(st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=12)))
def test_list_queries_parse_or_name_the_problem(query: dict[str, str]) -> None:
    parsed, error = attempt(parse_query, ListVMsQuery, query)
    if parsed is None:
        assert error is not None
        assert error.message
        return
    vm_query = parsed.to_query()
    assert vm_query.offset >= 0
    assert vm_query.limit is None or vm_query.limit >= 1


@given(st.dictionaries(st.sampled_from(["status", "sort", "limit", "offset", "descending"]),
                       variants))  # fmt: skip
def test_dbus_queries_decode_or_name_the_problem(filters: dict[str, tuple[str, Any]]) -> None:
    try:
        query = query_from_dbus(filters)
    except InvalidArgument:
        return
    assert query.offset >= 0
