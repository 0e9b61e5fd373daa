"""Published ports: a host port forwarded to a port of a VM, written `[ADDR:]HOST:VM[/PROTO]`.

The same short form as `docker run -p` and Incus proxy devices, so operators need not learn a
new one. A mapping without ADDR listens on every address of the host (0.0.0.0), and so
overlaps every other mapping of the same host port and protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import AddressValueError, IPv4Address
from typing import Any

from volant.model.errors import InvalidArgument

ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (published on every address, as documented)
PUBLISH_RULE = (
    "[ADDR:]HOST_PORT:VM_PORT[/tcp|udp], ports 1-65535, e.g. 8080:80 or 127.0.0.1:5432:5432"
)
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
IPV4_PATTERN = rf"^{_OCTET}(\.{_OCTET}){{3}}$"
# Exactly the forms parse_publish takes, for JSON Schema documents (it says what is wrong).
PUBLISH_PATTERN = rf"^({_OCTET}(\.{_OCTET}){{3}}:)?{_PORT}:{_PORT}(/(tcp|udp))?$"
_EXACT = re.compile(PUBLISH_PATTERN)
_FORM = re.compile(r"(?:(?P<addr>[0-9.]+):)?(?P<host>[0-9]+):(?P<vm>[0-9]+)(?:/(?P<proto>[a-z]+))?")


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class PortMapping:
    """host_addr:host_port on the host forwarded to vm_port of the VM's address."""

    host_port: int
    vm_port: int
    proto: Protocol = Protocol.TCP
    host_addr: str = ANY_ADDRESS

    def __str__(self) -> str:
        addr = "" if self.host_addr == ANY_ADDRESS else f"{self.host_addr}:"
        return f"{addr}{self.host_port}:{self.vm_port}/{self.proto}"

    def overlaps(self, other: PortMapping) -> bool:
        """True when both would take the same host port: same port and protocol, and the
        same address or either on every address."""
        same_address = self.host_addr == other.host_addr or ANY_ADDRESS in (
            self.host_addr,
            other.host_addr,
        )
        return self.host_port == other.host_port and self.proto == other.proto and same_address

    def to_dict(self) -> dict[str, Any]:
        return {
            "host_addr": self.host_addr,
            "host_port": self.host_port,
            "vm_port": self.vm_port,
            "proto": self.proto.value,
        }


def _port(value: object, what: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument(
            f"{what} {value!r} is not a port number (1-65535)", hint=PUBLISH_RULE, field=field
        )
    return value


def _address(value: str, field: str) -> str:
    try:
        return str(IPv4Address(value))
    except AddressValueError:
        raise InvalidArgument(
            f"{value!r} is not an IPv4 address", hint=PUBLISH_RULE, field=field
        ) from None


def parse_publish(text: str, field: str = "publish") -> PortMapping:
    """A mapping from its short form; InvalidArgument naming field when it is not one."""
    match = _FORM.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"{text!r} is not a published port", hint=PUBLISH_RULE, field=field)
    proto = match["proto"] or "tcp"
    if proto not in Protocol.__members__.values():
        raise InvalidArgument(
            f"protocol {proto!r} in {text!r} is neither tcp nor udp", hint=PUBLISH_RULE, field=field
        )
    mapping = PortMapping(
        host_port=_port(int(match["host"]), "host port", field),
        vm_port=_port(int(match["vm"]), "VM port", field),
        proto=Protocol(proto),
        host_addr=_address(match["addr"], field) if match["addr"] else ANY_ADDRESS,
    )
    if not _EXACT.fullmatch(text):  # what is left: leading zeros
        raise InvalidArgument(
            f"{text!r} is not a published port (no leading zeros)", hint=PUBLISH_RULE, field=field
        )
    return mapping


def mappings_from(values: Iterable[object], field: str = "publish") -> tuple[PortMapping, ...]:
    """Each entry parsed (short or object form); overlaps within the list are validate_publish's
    to find, once the VM's plugin is known to exist."""
    return tuple(mapping_from(value, f"{field}[{index}]") for index, value in enumerate(values))


def mapping_from(value: object, field: str = "publish") -> PortMapping:
    """A mapping from its short form or from its object form (to_dict's keys)."""
    if isinstance(value, PortMapping):
        return value
    if isinstance(value, str):
        return parse_publish(value, field)
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"{value!r} is neither a string nor an object", hint=PUBLISH_RULE, field=field
        )
    unknown = set(value) - {"host_addr", "host_port", "vm_port", "proto"}
    if unknown:
        raise InvalidArgument(
            f"unknown keys {sorted(unknown)} in a published port", hint=PUBLISH_RULE, field=field
        )
    proto = value.get("proto", "tcp")
    if proto not in Protocol.__members__.values():
        raise InvalidArgument(f"protocol {proto!r} is neither tcp nor udp", field=field)
    addr = value.get("host_addr") or ANY_ADDRESS
    if not isinstance(addr, str):
        raise InvalidArgument(f"host_addr {addr!r} is not an IPv4 address", field=field)
    return PortMapping(
        host_port=_port(value.get("host_port"), "host port", field),
        vm_port=_port(value.get("vm_port"), "VM port", field),
        proto=Protocol(proto),
        host_addr=_address(addr, field),
    )


def validate_publish(values: Iterable[object], field: str = "publish") -> tuple[PortMapping, ...]:
    """Every mapping parsed, none taking a host port another one of the list takes."""
    mappings: list[PortMapping] = []
    for index, mapping in enumerate(mappings_from(values, field)):
        for earlier in mappings:
            if mapping.overlaps(earlier):
                raise InvalidArgument(
                    f"{mapping} and {earlier} take the same host port",
                    hint="publish each host port once",
                    field=f"{field}[{index}]",
                )
        mappings.append(mapping)
    return tuple(mappings)
