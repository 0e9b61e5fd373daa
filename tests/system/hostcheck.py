"""What a volantd.service in a sysbox has made on its host, compared with what its store says.

Used by the fault-injection walk and the soak: after any kill and restart, the scopes, QEMU
processes, taps, machined machines, run directories, console logs, VM disks and resource records
must match the VMs exactly, and so must the published ports' nftables rules.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from scripts.volantbox import VolantBox
from volant.host.units import scope_name
from volant.network.names import tap_name

ACTIVE = ("starting", "running", "stopping")
QUERY = """
import json, sqlite3
db = sqlite3.connect("file:/var/lib/volant/state.db?mode=ro", uri=True)
records = db.execute("SELECT kind, name, vm FROM host_resources").fetchall()
volumes = [name for (name,) in db.execute("SELECT name FROM volumes").fetchall()]
leases = db.execute(
    "SELECT a.ip_address, v.name FROM ip_allocations a JOIN vms v ON v.id = a.vm_id"
    " WHERE a.status = 'leased'"
).fetchall()
print(json.dumps({"records": records, "leases": leases, "volumes": volumes}))
"""


@dataclass(frozen=True)
class HostView:
    scopes: frozenset[str]
    qemu_pids: frozenset[int]
    taps: frozenset[str]
    machines: frozenset[str]
    run_dirs: frozenset[str]
    console_logs: frozenset[str]
    disks: frozenset[str]
    records: frozenset[tuple[str, str, str]]
    leases: frozenset[tuple[str, str]]
    volume_files: frozenset[str]
    volumes: frozenset[str]
    port_rules: frozenset[str]  # VMs with published ports' rules in table inet volant
    dnsmasq: bool  # volant-dnsmasq.service is active


def published(vb: VolantBox) -> frozenset[str]:
    """VMs named by the comments of the rules in volantd's publish chains."""
    names: set[str] = set()
    for chain in ("publish_prerouting", "publish_output"):
        listed = vb.run("nft", "-j", "list", "chain", "inet", "volant", chain)
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["nftables"]:
            comment = item.get("rule", {}).get("comment", "")
            if comment.startswith("vm:"):
                names.add(comment.removeprefix("vm:"))
    return frozenset(names)


def host_view(vb: VolantBox) -> HostView:
    units = vb.sh(
        "systemctl list-units 'volant-vm-*' --all --no-legend --plain --state=active,activating,"
        "deactivating | awk '{print $1}'"
    )
    qemu = vb.run("pgrep", "-f", r"^\S*qemu-system-x86_64 ").stdout
    links = vb.sh("ip -o link show | awk -F': ' '{print $2}'")
    dnsmasq = vb.run("systemctl", "is-active", "--quiet", "volant-dnsmasq.service").returncode == 0
    machines = vb.sh("machinectl list --no-legend --no-pager | awk '{print $1}'")
    run_dirs = vb.sh("ls -1 /run/volant/vms 2>/dev/null || true")
    logs = vb.sh("ls -1 /var/lib/volant/consoles 2>/dev/null || true")
    disks = vb.sh("ls -1A /var/lib/volant/disks 2>/dev/null || true")
    volume_files = vb.sh("ls -1 /var/lib/volant/volumes 2>/dev/null || true")
    # Read inside the box (its /var/lib is its own), with the system's python3.
    tables = json.loads(vb.sh(f"python3 -c {shlex.quote(QUERY)}"))
    records, leases = tables["records"], tables["leases"]
    return HostView(
        scopes=frozenset(units.split()),
        qemu_pids=frozenset(int(pid) for pid in qemu.split()),
        taps=frozenset(link.split("@")[0] for link in links.split() if link.startswith("vt-")),
        machines=frozenset(machines.split()),
        run_dirs=frozenset(run_dirs.split()),
        console_logs=frozenset(log.removesuffix(".log") for log in logs.split()),
        disks=frozenset(disks.split()),
        records=frozenset((str(k), str(n), str(v)) for k, n, v in records),
        leases=frozenset((str(ip), str(name)) for ip, name in leases),
        volume_files=frozenset(f"/var/lib/volant/volumes/{f}" for f in volume_files.split()),
        volumes=frozenset(str(name) for name in tables["volumes"]),
        port_rules=published(vb),
        dnsmasq=dnsmasq,
    )


def orphans(vb: VolantBox, vms: list[dict[str, Any]]) -> list[str]:
    """Every disagreement between the host and the VMs volantd reports; [] when none."""
    view = host_view(vb)
    active = {vm["name"]: vm for vm in vms if vm["status"] in ACTIVE}
    names = {vm["name"] for vm in vms}
    problems: list[str] = []

    def differ(what: str, seen: set[Any] | frozenset[Any], expected: set[Any]) -> None:
        if set(seen) != expected:
            problems.append(f"{what}: host has {sorted(seen)}, store wants {sorted(expected)}")

    differ("scopes", view.scopes, {scope_name(n) for n in active})
    differ("qemu", view.qemu_pids, {vm["pid"] for vm in active.values()})
    differ("taps", view.taps, {tap_name(n) for n in active})
    differ("machines", view.machines, set(active))
    differ("published ports", view.port_rules, {n for n, vm in active.items() if vm.get("publish")})
    if not view.run_dirs <= names:
        problems.append(f"run dirs without a VM: {sorted(view.run_dirs - names)}")
    if not view.console_logs <= names:
        problems.append(f"console logs without a VM: {sorted(view.console_logs - names)}")
    # A VM's disk is <name>.img; anything else (a partial `.<name>.img.partial`) is left over.
    if not view.disks <= {f"{name}.img" for name in names}:
        problems.append(f"disks without a VM: {sorted(view.disks - {f'{n}.img' for n in names})}")
    # Volume files belong to no VM: recorded with vm "", one per volume row, each on disk.
    volume_records = {name for kind, name, _vm in view.records if kind == "volume"}
    differ("volume files", view.volume_files, volume_records)
    differ("volume records", volume_records,
           {f"/var/lib/volant/volumes/{name}.img" for name in view.volumes})  # fmt: skip
    # volantd's dnsmasq is no VM's either: recorded exactly while its unit runs.
    dnsmasq_records = {name for kind, name, _vm in view.records if kind == "dnsmasq"}
    differ("dnsmasq", dnsmasq_records, {"volant-dnsmasq.service"} if view.dnsmasq else set())
    strays = {r for r in view.records if r[2] not in names and r[0] not in ("volume", "dnsmasq")}
    if strays:
        problems.append(f"resource records without a VM: {sorted(strays)}")
    for kind, name, vm in view.records:
        if kind in ("scope", "tap", "machine", "port_rules") and vm not in active:
            problems.append(f"{kind} record {name} of VM {vm}, which is not running")
    # A dhcp-mode VM's address is its DHCP lease (a "lease" record), not the pool's.
    dhcp = {(name, vm) for kind, name, vm in view.records if kind == "lease"}
    differ(
        "leases",
        view.leases,
        {
            (vm["ip_address"], vm["name"])
            for vm in vms
            if vm.get("ip_address") and (vm["ip_address"], vm["name"]) not in dhcp
        },
    )
    return problems
