"""`volar system`: how the daemon and its host are doing (status), and how it is set up (info)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from volant.cli.context import Context, json_option, pass_ctx
from volant.cli.output import emit_json, fields

# Statuses in lifecycle order, so that "VMs" reads the same on every host; others follow.
STATUS_ORDER = ("running", "starting", "creating", "stopping", "stopped", "crashed", "error")
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@click.group()
def system() -> None:
    """The daemon and its host."""


@system.command("status")
@json_option
@pass_ctx
def system_status(ctx: Context, as_json: bool) -> None:
    """Show VMs by status, their usage, the IP pool and the host's load."""
    status = ctx.call(lambda c: c.system_status())
    emit_json(status) if as_json else fields(status_rows(status))


@system.command("info")
@json_option
@pass_ctx
def system_info(ctx: Context, as_json: bool) -> None:
    """Show the daemon's version, host, hypervisor, network and policies."""
    info = ctx.call(lambda c: c.system_info())
    emit_json(info) if as_json else fields(info_rows(info))


def status_rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The `volar system status` lines as (label, text)."""
    host = status.get("host") or {}
    usage = status.get("usage") or {}
    load = " ".join(f"{x:.2f}" for x in host.get("load_average") or []) or "-"
    cpu = usage.get("cpu_seconds")
    memory = usage.get("memory_bytes")
    disk = usage.get("disk_bytes")
    return [
        ("volantd", _daemon(status)),
        ("VMs", _vm_counts(status.get("vms_total", 0), status.get("vms_by_status") or {})),
        (
            "usage",
            f"CPU {'-' if cpu is None else f'{cpu:.1f} s'}, "
            f"memory {'-' if memory is None else size(memory)}, "
            f"VM disks {'-' if disk is None else size(disk)}",
        ),
        (
            "IP pool",
            f"{status.get('ip_pool_leased', 0)} of {status.get('ip_pool_total', 0)} leased "
            f"in {status.get('ip_pool_subnet', '-')}",
        ),
        (
            "host",
            f"{_count(host.get('cpus', 0), 'CPU')}, {host.get('cpu_percent', 0.0):.1f}% busy, "
            f"load {load}",
        ),
        (
            "memory",
            f"{size(host.get('memory_available_bytes', 0))} available of "
            f"{size(host.get('memory_total_bytes', 0))}",
        ),
        ("up", duration(host.get("uptime_seconds", 0.0))),
        ("events", _count(status.get("event_subscribers", 0), "subscriber")),
    ]


def info_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The `volar system info` lines as (label, text)."""
    return [
        ("version", f"{info.get('version', '-')} (API {info.get('api_version', '-')})"),
        ("host", f"{info.get('hostname', '-')}, Linux {info.get('kernel', '-')}"),
        ("supervisor", str(info.get("supervisor", "-"))),
        ("hypervisor", f"{info.get('hypervisor', '-')} (accel {info.get('accel', '-')})"),
        ("state", str(info.get("state_dir", "-"))),
        (
            "network",
            f"bridge {info.get('bridge', '-')}, {info.get('subnet', '-')}, "
            f"host {info.get('host_ip', '-')}",
        ),
        (
            "signatures",
            "required" if info.get("plugins_require_signature") else "checked if present",
        ),
        ("API key", "required over TCP" if info.get("api_key_required") else "not required"),
    ]


def _daemon(status: dict[str, Any]) -> str:
    return (
        f"{status.get('version', '-')}, supervisor {status.get('supervisor', '-')}, "
        f"hypervisor {status.get('hypervisor', '-')}"
    )


def _vm_counts(total: int, by_status: dict[str, int]) -> str:
    order = [s for s in STATUS_ORDER if s in by_status] + sorted(
        s for s in by_status if s not in STATUS_ORDER
    )
    counts = ", ".join(f"{by_status[s]} {s}" for s in order if by_status[s])
    return f"{total} ({counts})" if counts else str(total)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def size(n: float) -> str:
    """Bytes for people: 1.5 GiB, 512 MiB, 0 B."""
    value, unit = float(n), UNITS[0]
    for bigger in UNITS[1:]:
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"


def duration(seconds: float) -> str:
    """A duration for people in its two largest units: 3 d 4 h, 5 h 2 min, 42 s."""
    rest = int(seconds)
    parts: Sequence[tuple[int, str]] = (
        (rest // 86400, "d"),
        (rest % 86400 // 3600, "h"),
        (rest % 3600 // 60, "min"),
        (rest % 60, "s"),
    )
    shown = [f"{n} {unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0 s"
