"""Published ports on the host: nftables DNAT in table inet volant, and who holds a host port.

volantd owns four chains of the table `volar setup` writes (setup's own chains are left alone,
and its drift check skips these): `publish_prerouting` (clients from outside, and guests
through the host: the hairpin), `publish_output` (clients on the host itself), and
`publish_postrouting` with `publish_filter`, which hold no per-VM rules:

- DNATed connections from a guest (hairpin) or from 127.0.0.0/8 (a client on the host using
  loopback) are masqueraded behind the bridge address, so the replies come back through the
  host and conntrack undoes the DNAT;
- loopback sources may leave through the bridge only with `route_localnet` on it (as Docker and
  Incus do for 127.0.0.1), which also lets packets for 127.0.0.0/8 in from outside: dropped
  early, in publish_filter, unless they come from lo.

Each VM's rules carry the comment `vm:<name>`, so they are listed, removed and repaired by VM.
The chains are made on first use with `add` (a no-op when they exist), so volantd works
without `volar setup` too (the integration tests run it in a bare network namespace). Setup's
forward chain accepts DNATed traffic to the bridge (`ct status dnat accept`) before it refuses
new connections to the guests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from volant.model import ANY_ADDRESS, Conflict, InvalidArgument, PortMapping, Unavailable

log = logging.getLogger(__name__)

TABLE = "volant"
CHAINS = ("publish_prerouting", "publish_output", "publish_postrouting", "publish_filter")
PREROUTING, OUTPUT = CHAINS[0], CHAINS[1]
TAG = "vm:"
# rtnetlink numbers (linux/rtnetlink.h, if_link.h, ip.h) for set_route_localnet.
RTM_SETLINK, IFLA_AF_SPEC, IFLA_INET_CONF, IPV4_DEVCONF_ROUTE_LOCALNET = 19, 26, 1, 26
_SS_USERS = re.compile(r'users:\(\("(?P<name>[^"]+)",pid=(?P<pid>\d+)')


def chains_text(bridge: str, subnet: IPv4Network) -> str:
    """The chains volantd owns, for `nft -f`: `add` makes what is missing, keeps what is there."""
    t = f"inet {TABLE}"
    return (
        f"add table {t}\n"
        f"add chain {t} {PREROUTING} "
        "{ type nat hook prerouting priority dstnat; policy accept; }\n"
        # nft 1.0.6 knows the name dstnat only at prerouting; -100 is the same priority.
        f"add chain {t} {OUTPUT} {{ type nat hook output priority -100; policy accept; }}\n"
        f"add chain {t} publish_postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }\n"
        f"flush chain {t} publish_postrouting\n"
        f"add rule {t} publish_postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade\n"
        f'add rule {t} publish_postrouting ct status dnat ip saddr {subnet} oifname "{bridge}" '
        "masquerade\n"
        f"add chain {t} publish_filter "
        "{ type filter hook prerouting priority raw; policy accept; }\n"
        f"flush chain {t} publish_filter\n"
        f'add rule {t} publish_filter iifname != "lo" ip daddr 127.0.0.0/8 drop\n'
    )


def rule_match(mapping: PortMapping) -> str:
    """What a packet for mapping's host port looks like: to that address, or to any address
    of this host (fib: whatever this host would deliver locally, 127.0.0.1 included)."""
    to = (
        "fib daddr type local"
        if mapping.host_addr == ANY_ADDRESS
        else f"ip daddr {mapping.host_addr}"
    )
    return f"{to} {mapping.proto} dport {mapping.host_port}"


def rules_text(vm: str, address: str, mappings: Iterable[PortMapping]) -> str:
    """The VM's DNAT rules, for `nft -f` (one transaction: all of them or none)."""
    lines = []
    for mapping in mappings:
        rule = f'{rule_match(mapping)} dnat ip to {address}:{mapping.vm_port} comment "{TAG}{vm}"'
        lines += [f"add rule inet {TABLE} {chain} {rule}\n" for chain in (PREROUTING, OUTPUT)]
    return "".join(lines)


class PortRules:
    """Adds, lists and removes published ports' rules with `nft`, in volantd's own network
    namespace; and tells whether a host process holds a port."""

    def __init__(self, bridge: str, subnet: IPv4Network, *, proc: Path = Path("/proc")) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.proc = proc

    async def add(self, vm: str, address: str, mappings: Iterable[PortMapping]) -> None:
        """Forward the mappings' host ports to address; the VM's earlier rules go first."""
        await self._route_localnet()
        handles = await self._handles(vm)
        text = chains_text(self.bridge, self.subnet) + _deletions(handles)
        await _nft(["-f", "-"], text + rules_text(vm, address, mappings))

    async def remove(self, vm: str) -> None:
        """Remove every rule of the VM (none: nothing to do)."""
        handles = await self._handles(vm)
        if handles:
            await _nft(["-f", "-"], _deletions(handles))

    async def listed(self) -> dict[str, int]:
        """VMs with rules in the table: name -> how many rules."""
        counts: dict[str, int] = {}
        for rule in await self._rules():
            name = rule["comment"][len(TAG) :]
            counts[name] = counts.get(name, 0) + 1
        return counts

    async def _handles(self, vm: str) -> list[tuple[str, int]]:
        return [
            (rule["chain"], rule["handle"])
            for rule in await self._rules()
            if rule["comment"] == f"{TAG}{vm}"
        ]

    async def _rules(self) -> list[dict[str, Any]]:
        """Volant's tagged rules in the publish chains (none when a chain is missing)."""
        found: list[dict[str, Any]] = []
        for chain in (PREROUTING, OUTPUT):
            code, out, _ = await _run(["nft", "-j", "list", "chain", "inet", TABLE, chain])
            if code != 0:
                continue  # no table or no chain yet: no rules
            for item in json.loads(out).get("nftables", []):
                rule = item.get("rule")
                if rule and str(rule.get("comment", "")).startswith(TAG):
                    found.append(rule)
        return found

    async def _route_localnet(self) -> None:
        """Let DNATed packets from 127.0.0.0/8 leave through the bridge (then masqueraded)."""
        knob = self.proc / "sys/net/ipv4/conf" / self.bridge / "route_localnet"
        try:
            if (await asyncio.to_thread(knob.read_text)).strip() != "1":
                await asyncio.to_thread(set_route_localnet, self.bridge)
        except OSError as exc:
            log.warning(
                "cannot set route_localnet on %s (%s): clients on this host reach published "
                "ports at the host's other addresses, not at 127.0.0.1",
                self.bridge,
                exc.strerror or exc,
            )

    async def check_address(self, mapping: PortMapping, field: str = "publish") -> None:
        """InvalidArgument unless mapping's address is one of this host's (or 0.0.0.0)."""
        if mapping.host_addr == ANY_ADDRESS:
            return
        code, out, err = await _run(["ip", "-j", "-4", "addr", "show"])
        if code != 0:
            raise Unavailable(f"cannot list this host's addresses: {err.strip()}")
        local = {a.get("local") for link in json.loads(out) for a in link.get("addr_info", [])}
        if mapping.host_addr not in local:
            raise InvalidArgument(
                f"{mapping.host_addr} in {mapping} is not an address of this host",
                hint="leave ADDR out to publish on every address, or name one `ip addr` shows",
                field=field,
            )

    async def holder(self, mapping: PortMapping) -> str | None:
        """The host process listening on mapping's host port, if any ("pid 123 (nginx)"; a
        process this daemon may not look into is "a host process")."""
        flag = "-t" if mapping.proto == "tcp" else "-u"
        code, out, err = await _run(
            ["ss", "-H", "-l", "-n", "-p", flag, f"sport = :{mapping.host_port}"]
        )
        if code != 0:
            raise Unavailable(f"cannot list the host's listening sockets: {err.strip()}")
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 4 or not _same_address(fields[3], mapping):
                continue
            users = _SS_USERS.search(line)
            return f"pid {users['pid']} ({users['name']})" if users else "a host process"
        return None

    async def check_free(self, mapping: PortMapping, field: str = "publish") -> None:
        """Conflict when a host process listens on mapping's host port."""
        holder = await self.holder(mapping)
        if holder is not None:
            raise Conflict(
                f"host port {mapping.host_port}/{mapping.proto} of {mapping} is in use by {holder}",
                hint="publish another host port, or stop that process",
                field=field,
            )


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("HH", size, kind) + payload + b"\0" * (-size % 4)


def set_route_localnet(bridge: str) -> None:
    """net.ipv4.conf.<bridge>.route_localnet=1 through rtnetlink (RTM_SETLINK, IFLA_AF_SPEC ->
    AF_INET -> IFLA_INET_CONF), which needs CAP_NET_ADMIN only: volantd.service's
    ProtectKernelTunables= keeps /proc/sys read-only for it."""
    conf = _nla(IFLA_INET_CONF, _nla(IPV4_DEVCONF_ROUTE_LOCALNET, struct.pack("I", 1)))
    attrs = _nla(IFLA_AF_SPEC, _nla(socket.AF_INET, conf))
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex(bridge), 0, 0) + attrs
    flags = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    header = struct.pack("IHHII", 16 + len(body), RTM_SETLINK, flags, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.bind((0, 0))
        nl.send(header + body)
        reply = nl.recv(65536)
    (error,) = struct.unpack_from("i", reply, 16)  # the NLMSG_ERROR's code; 0 is the ack
    if error:
        raise OSError(-error, os.strerror(-error))


def _same_address(local: str, mapping: PortMapping) -> bool:
    """Whether ss's local address column (`0.0.0.0:80`, `[::]:80`, `*:80`, `127.0.0.1%lo:53`)
    is on mapping's host address."""
    addr = local.rsplit(":", 1)[0].split("%", 1)[0].strip("[]")
    if addr in ("0.0.0.0", "*", "::") or mapping.host_addr == ANY_ADDRESS:  # noqa: S104
        return True
    return addr in (mapping.host_addr, f"::ffff:{mapping.host_addr}")


def _deletions(handles: Iterable[tuple[str, int]]) -> str:
    return "".join(
        f"delete rule inet {TABLE} {chain} handle {handle}\n" for chain, handle in handles
    )


async def _run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise Unavailable(
            f"cannot run {argv[0]}: {exc}", hint="install nftables and iproute2"
        ) from exc
    out, err = await proc.communicate(None if stdin is None else stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _nft(args: list[str], stdin: str) -> None:
    code, _, err = await _run(["nft", *args], stdin)
    if code != 0:
        hint = "volantd needs CAP_NET_ADMIN" if "Operation not permitted" in err else ""
        raise Unavailable(f"nft could not change table inet {TABLE}: {err.strip()}", hint=hint)
