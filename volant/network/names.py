"""Deterministic names and addresses derived from a VM's name: pure functions, no I/O."""

from __future__ import annotations

import hashlib

from volant.model import InvalidArgument

TAP_PREFIX = "vt-"
MAC_PREFIX = "02:56"
IFNAMSIZ = 16  # the kernel's buffer, including the terminating NUL


def tap_name(vm_name: str) -> str:
    """`vt-` + 10 hex digits of sha256(vm_name): 13 bytes, inside the kernel's 15-byte limit."""
    return TAP_PREFIX + hashlib.sha256(vm_name.encode()).hexdigest()[:10]


def mac_for(name: str, ip: str | None) -> str:
    """The VM's MAC: `02:56:` + 4 bytes of sha256("name|ip").

    0x02 in the first octet makes it locally administered and unicast, so it never clashes with
    a vendor's address; the fixed prefix lets firewall rules match every Volant guest. A VM
    without a leased address hashes "name|".
    """
    digest = hashlib.sha256(f"{name}|{ip or ''}".encode()).digest()
    return ":".join([MAC_PREFIX, *(f"{byte:02x}" for byte in digest[:4])])


def check_ifname(name: str, what: str = "interface") -> str:
    """Refuse names the kernel would reject or truncate, before any netlink call."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or name in (".", ".."):
        raise InvalidArgument(f"{what} name {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
    if any(c in "/:" or c.isspace() or not c.isprintable() for c in name):
        raise InvalidArgument(f"{what} name {name!r} may not contain '/', ':' or whitespace")
    return name
