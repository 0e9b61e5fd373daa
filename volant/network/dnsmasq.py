"""volantd's dnsmasq on the bridge: its command line, address plan, files and lease file.

One dnsmasq (Debian's dnsmasq-base) serves the bridge only (`--interface --bind-interfaces`,
never lo, no /etc/dnsmasq.conf): DHCP for guests in `dhcp` mode from the upper quarter of the
subnet, which the static pool leaves out, and DNS for every guest, forwarding to the host's
resolvers (/etc/resolv.conf) and answering `<vm>.<domain>` from a hosts file volantd rewrites
(then SIGHUP). Leases are infinite: a guest keeps its address until volantd releases it
(`dhcp_release`) when the VM is deleted, so a guest that asks once at boot never loses it.
Pure functions only; starting and stopping the process is the engine's (volant.engine.dns).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

BINARY = "dnsmasq"
RELEASE_BINARY = "dhcp_release"
# The DHCP range is the upper 1/DHCP_SHARE of the subnet's host addresses.
DHCP_SHARE = 4


@dataclass(frozen=True)
class DhcpRange:
    """The addresses dnsmasq hands out, first to last inclusive."""

    first: IPv4Address
    last: IPv4Address

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    def addresses(self) -> set[IPv4Address]:
        return {IPv4Address(n) for n in range(int(self.first), int(self.last) + 1)}

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def dhcp_range(subnet: IPv4Network, host_ip: IPv4Address) -> DhcpRange | None:
    """The upper quarter of the subnet's host addresses (192.168.127.192-254 in the default
    /24), below the host's own address when that is the last one; None when the subnet is too
    small to spare one (a /30 or smaller)."""
    hosts = subnet.num_addresses - 2
    share = hosts // DHCP_SHARE
    if share < 1:
        return None
    last = subnet.broadcast_address - 1
    first = last - (share - 1)
    if host_ip == last:
        last -= 1
    elif host_ip == first:
        first += 1
    if last < first:
        return None
    return DhcpRange(first, last)


@dataclass(frozen=True)
class Plan:
    """Where and how volantd's dnsmasq runs."""

    bridge: str
    subnet: IPv4Network
    host_ip: IPv4Address
    domain: str
    run_dir: Path  # pid file, hosts files (runtime: rewritten from the store at every start)
    lease_file: Path  # under the state directory: leases outlive a reboot

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "dnsmasq.pid"

    @property
    def hosts_file(self) -> Path:
        return self.run_dir / "hosts"

    @property
    def dhcp_hosts_file(self) -> Path:
        return self.run_dir / "dhcp-hosts"


def command(plan: Plan, binary: str = BINARY) -> list[str]:
    """dnsmasq's argv. Bound to the bridge alone and configured entirely here (no
    /etc/dnsmasq.conf, no /etc/hosts); stays root with its own group (it never drops to
    `nobody`, who could not read the files under volantd's directories, nor changes group,
    which takes CAP_SETGID its unit does not have), logs to stderr."""
    argv = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        f"--interface={plan.bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        "--user=root",
        "--group=",
        "--log-facility=-",
        f"--pid-file={plan.pid_file}",
        "--no-hosts",
        f"--addn-hosts={plan.hosts_file}",
        f"--domain={plan.domain}",
        f"--local=/{plan.domain}/",
        "--domain-needed",
        f"--dhcp-leasefile={plan.lease_file}",
        f"--dhcp-hostsfile={plan.dhcp_hosts_file}",
    ]
    span = dhcp_range(plan.subnet, plan.host_ip)
    if span is not None:
        argv += [
            f"--dhcp-range={span.first},{span.last},{plan.subnet.netmask},infinite",
            "--dhcp-authoritative",
            f"--dhcp-option=option:router,{plan.host_ip}",
            f"--dhcp-option=option:dns-server,{plan.host_ip}",
        ]
    return argv


@dataclass(frozen=True)
class Lease:
    """One line of dnsmasq's lease file: `<expiry> <mac> <ip> <hostname|*> <client-id|*>`."""

    mac: str
    ip: str
    hostname: str = ""


def parse_leases(text: str) -> list[Lease]:
    """The IPv4 leases in a lease file's text; malformed lines and DHCPv6 ones are skipped."""
    leases = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":
            continue
        mac, ip, host = fields[1].lower(), fields[2], fields[3]
        try:
            IPv4Address(ip)
        except ValueError:
            continue
        if mac.count(":") != 5:
            continue
        leases.append(Lease(mac, ip, "" if host == "*" else host))
    return leases


def hosts_text(names: Iterable[tuple[str, str]], domain: str) -> str:
    """The hosts file: `<ip> <name>.<domain> <name>` for every (name, ip), sorted by name."""
    return "".join(f"{ip} {name}.{domain} {name}\n" for name, ip in sorted(names))


def dhcp_hosts_text(reserved: Iterable[tuple[str, str]]) -> str:
    """The dhcp-hostsfile: one `<mac>,<ip>` per static guest whose address lies in the DHCP
    range (leased before the range existed), so dnsmasq never offers it to another guest."""
    return "".join(f"{mac},{ip}\n" for mac, ip in sorted(reserved))


def release_command(bridge: str, lease: Lease, binary: str = RELEASE_BINARY) -> Sequence[str]:
    """dhcp_release's argv: it sends dnsmasq a DHCPRELEASE for the lease, as the guest would."""
    return [binary, bridge, lease.ip, lease.mac]
