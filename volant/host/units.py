"""systemd unit names for VMs: systemd's escaping rules, and the scope and slice names."""

from __future__ import annotations

from typing import Any

from volant.model import ScopeLimits

SLICE = "volant.slice"
SCOPE_PREFIX = "volant-vm-"
DAEMON_UNIT = "volantd.service"

# Bytes systemd keeps as they are in an escaped unit-name component (unit_name_escape()).
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def escape_unit_name(text: str) -> str:
    """Escape text the way `systemd-escape TEXT` does.

    "/" becomes "-"; every other byte of the UTF-8 encoding outside [a-zA-Z0-9:_.] becomes
    `\\xNN` (lower-case hex), and so does a leading ".". So "web-1" becomes "web\\x2d1".
    """
    out: list[str] = []
    for index, byte in enumerate(text.encode()):
        if byte == ord("/"):
            out.append("-")
        elif byte in _PLAIN and not (index == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescape_unit_name(text: str) -> str:
    """The inverse of escape_unit_name (`systemd-escape --unescape`)."""
    raw = bytearray()
    index = 0
    while index < len(text):
        if text.startswith("\\x", index) and index + 4 <= len(text):
            try:
                raw.append(int(text[index + 2 : index + 4], 16))
            except ValueError:
                pass
            else:
                index += 4
                continue
        raw.extend(b"/" if text[index] == "-" else text[index].encode())
        index += 1
    return raw.decode(errors="replace")


def vm_of_scope(unit: str) -> str | None:
    """The VM name a scope unit name stands for, or None when it is not a VM scope."""
    if not unit.startswith(SCOPE_PREFIX) or not unit.endswith(".scope"):
        return None
    return unescape_unit_name(unit[len(SCOPE_PREFIX) : -len(".scope")])


def scope_name(vm_name: str) -> str:
    """The transient scope unit that holds a VM's hypervisor: volant-vm-<escaped name>.scope."""
    return f"{SCOPE_PREFIX}{escape_unit_name(vm_name)}.scope"


def scope_properties(
    vm_name: str, pid: int, limits: ScopeLimits
) -> list[tuple[str, tuple[str, Any]]]:
    """StartTransientUnit properties of a VM's scope, as (name, (D-Bus signature, value)).

    Limits are set even where systemd cannot enforce them (a cgroup v2 tree without the cpu,
    memory or pids controllers): they show in `systemctl show` and apply once it can.
    """
    return [
        ("Description", ("s", f"Volant VM {vm_name}")),
        ("PIDs", ("au", [pid])),
        ("Slice", ("s", SLICE)),
        # CPUQuota=100% is one CPU-second per second.
        ("CPUQuotaPerSecUSec", ("t", limits.cpu_quota_percent * 10_000)),
        ("MemoryMax", ("t", limits.memory_max_bytes)),
        ("TasksMax", ("t", limits.tasks_max)),
        ("CollectMode", ("s", "inactive-or-failed")),
        # Stop order is the reverse of start order: at host shutdown volantd stops first and
        # powers the guests off itself; only then would systemd SIGTERM what is left here
        # (QEMU quits on SIGTERM at once, with no power-down the guest can see).
        ("Before", ("as", [DAEMON_UNIT])),
    ]
