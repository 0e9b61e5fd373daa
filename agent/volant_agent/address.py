"""The address the agent listens on: the guest's own, never 0.0.0.0.

Bound to the guest's address, the agent is not reachable through any other interface the
workload may add (a second NIC, a VPN, a container bridge), and a listener on the wildcard
address cannot be mistaken for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import time

log = logging.getLogger("volant_agent")

LOOPBACK = "127.0.0.1"
SIOCGIFADDR = 0x8915
DHCP_LOG_EVERY = 30.0


def ip_argument(cmdline: str) -> str | None:
    """The value of `ip=` on the kernel command line; None when there is none."""
    for token in cmdline.split():
        if token.startswith("ip="):
            return token[3:]
    return None


def static_address(ip_arg: str) -> str | None:
    """The client address of `ip=<client>:<server>:<gw>:<mask>:<host>:<dev>:<autoconf>`; None
    when the guest asks DHCP for it (as scripts/guest/boot.sh reads the same argument)."""
    fields = ip_arg.split(":")
    if ip_arg == "dhcp" or (len(fields) > 6 and fields[6] == "dhcp") or not fields[0]:
        return None
    return fields[0]


def interface_address(name: str = "eth0") -> str | None:
    """The IPv4 address on interface name (SIOCGIFADDR); None while it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


async def listen_address(cmdline: str, *, interface: str = "eth0", poll: float = 0.5) -> str:
    """Where the agent's TCP server binds.

    Static `ip=`: that address (the guest's init configured it before starting the agent).
    DHCP: eth0's address, waiting until the lease is there. No `ip=` (vsock mode, no NIC):
    loopback, since the host reaches the agent over vsock only.
    """
    ip_arg = ip_argument(cmdline)
    if ip_arg is None:
        return LOOPBACK
    static = static_address(ip_arg)
    if static is not None:
        return static
    next_log = 0.0
    while (address := interface_address(interface)) is None:
        if time.monotonic() >= next_log:
            log.warning("waiting for a DHCP address on %s before listening", interface)
            next_log = time.monotonic() + DHCP_LOG_EVERY
        await asyncio.sleep(poll)
    return address
