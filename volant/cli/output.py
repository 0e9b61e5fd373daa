"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

VM_COLUMNS = (
    ("NAME", "name"),
    ("STATUS", "status"),
    ("IP", "ip_address"),
    ("PORTS", "publish"),
    ("CPUS", "cpu_cores"),
    ("MEMORY", "memory_mb"),
    ("PLUGIN", "plugin"),
    ("PID", "pid"),
    ("UNIT", "unit"),
)
PLUGIN_COLUMNS = (
    ("NAME", "name"),
    ("VERSION", "version"),
    ("RUNTIME", "runtime"),
    ("ENABLED", "enabled"),
    ("SIGNER", "signer"),
    ("DIGEST", "digest"),
)
VOLUME_COLUMNS = (
    ("NAME", "name"),
    ("SIZE", "size_bytes"),
    ("USED", "allocated_bytes"),
    ("FORMATTED", "formatted"),
    ("IN USE BY", "in_use_by"),
    ("VMS", "attachments"),
)
# Keys shown only when they say something: an empty status_reason is the normal case.
QUIET_WHEN_EMPTY = frozenset({"status_reason"})
SHORT_DIGEST = 12
PORTS_SHOWN = 2  # a VM list shows this many published ports, then how many more


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _cell(key: str, value: Any) -> str:
    if key == "publish" and isinstance(value, list):
        return ports_cell(value)
    if value is None or value == "":
        return "-"
    if key == "memory_mb":
        return f"{value} MiB"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def ports_cell(ports: Sequence[str], shown: int = PORTS_SHOWN) -> str:
    """Published ports compactly: `8080:80,53:53/udp,+2` (tcp goes without saying)."""
    if not ports:
        return "-"
    texts = [str(p).removesuffix("/tcp") for p in ports]
    if len(texts) <= shown:
        return ",".join(texts)
    return ",".join(texts[:shown]) + f",+{len(texts) - shown}"


def short_digest(digest: str) -> str:
    """The first hex digits of "sha256:<hex>", enough to tell plugins apart at a glance."""
    return digest.removeprefix("sha256:")[:SHORT_DIGEST] or "-"


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for title, _key in columns:
        table.add_column(title, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True).print(table)


OPERATION_COLUMNS = (
    ("OPERATION", "key"),
    ("METHOD", "method"),
    ("PATH", "path"),
    ("SUMMARY", "summary"),
)


def operation_table(operations: Sequence[dict[str, Any]]) -> None:
    rows = [[_cell(key, op.get(key)) for _title, key in OPERATION_COLUMNS] for op in operations]
    _table(OPERATION_COLUMNS, rows)


def vm_table(vms: Sequence[dict[str, Any]]) -> None:
    _table(VM_COLUMNS, [[_cell(key, vm.get(key)) for _title, key in VM_COLUMNS] for vm in vms])


def details(obj: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
    """One aligned `key: value` line per field; nested values as compact JSON."""
    shown = {
        key: value
        for key, value in obj.items()
        if key not in skip and not (key in QUIET_WHEN_EMPTY and not value)
    }
    fields([(key, _value(key, value)) for key, value in shown.items()])


def _value(key: str, value: Any) -> str:
    if key == "publish" and isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return (
        json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else _cell(key, value)
    )


def fields(rows: Sequence[tuple[str, str]]) -> None:
    """One aligned `label: text` line per row."""
    width = max((len(label) for label, _text in rows), default=0)
    for label, text in rows:
        click.echo(f"{label + ':':<{width + 1}} {text}")


def vm_details(vm: dict[str, Any]) -> None:
    """The VM's fields, and a `disk` line when it has its own disk (a rootfs plugin's VM)."""
    from volant.cli.system import size  # here: volant.cli.system imports this module

    usage = vm.get("usage") or {}
    used, total = usage.get("disk_bytes"), usage.get("disk_size_bytes")
    if used is not None and total is not None:
        vm = {**vm, "disk": f"{size(used)} used on the host, {size(total)} in the guest"}
    details(vm)


def plugin_table(plugins: Sequence[dict[str, Any]]) -> None:
    rows = [
        [
            short_digest(str(p.get("digest") or "")) if key == "digest" else _cell(key, p.get(key))
            for _title, key in PLUGIN_COLUMNS
        ]
        for p in plugins
    ]
    _table(PLUGIN_COLUMNS, rows)


def plugin_details(plugin: dict[str, Any]) -> None:
    details(plugin, skip=frozenset({"manifest"}))
    manifest = plugin.get("manifest")
    if manifest is not None:
        click.echo("manifest:")
        for line in json.dumps(manifest, indent=2, sort_keys=True).splitlines():
            click.echo(f"  {line}")


def _volume_cell(key: str, value: Any) -> str:
    if key in ("size_bytes", "allocated_bytes") and isinstance(value, int):
        return _bytes(value)
    if key == "attachments" and isinstance(value, list):
        return ",".join(str(a.get("vm")) for a in value) or "-"
    return _cell(key, value)


def _bytes(value: int) -> str:
    """1.0G, 512M, 4.0K: what `ls -sh` would say."""
    size = float(value)
    for unit in ("", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit in ("", "K") or size >= 10 else f"{size:.1f}{unit}"
        size /= 1024
    return str(value)


def volume_table(volumes: Sequence[dict[str, Any]]) -> None:
    rows = [[_volume_cell(key, v.get(key)) for _title, key in VOLUME_COLUMNS] for v in volumes]
    _table(VOLUME_COLUMNS, rows)


def volume_details(volume: dict[str, Any]) -> None:
    details(volume, skip=frozenset({"attachments"}))
    attachments = volume.get("attachments") or []
    click.echo("attachments:" + ("" if attachments else " -"))
    for a in attachments:
        mode = "ro" if a.get("read_only") else "rw"
        click.echo(f"  {a.get('vm')}: {a.get('path')} ({mode}, VM {a.get('vm_status')})")


def log_line(line: dict[str, Any]) -> str:
    """`ts stream line` for one workload output line (ts: local time, milliseconds)."""
    ts = line.get("ts")
    if isinstance(ts, int | float):
        stamp = datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="milliseconds")
    else:
        stamp = str(ts or "-")
    text = line.get("line", line.get("text", ""))
    return f"{stamp} {line.get('stream') or '-'} {text}"


SHORT_VALUE = 60


def event_line(event: dict[str, Any]) -> str:
    """`time type vm key=value ...` for one event (time: local, milliseconds; None values and
    the payload's empty strings left out, long values cut)."""
    try:
        stamp = datetime.fromisoformat(str(event.get("ts"))).astimezone()
        when = stamp.replace(tzinfo=None).isoformat(sep=" ", timespec="milliseconds")
    except ValueError:
        when = str(event.get("ts") or "-")
    payload = event.get("payload")
    fields = sorted(payload.items(), key=_status_first) if isinstance(payload, dict) else []
    shown = [f"{key}={_short(value)}" for key, value in fields if value not in (None, "")]
    return " ".join([when, str(event.get("type", "-")), str(event.get("vm") or "-"), *shown])


def _status_first(item: tuple[str, Any]) -> tuple[bool, str]:
    return item[0] != "status", item[0]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= SHORT_VALUE else text[: SHORT_VALUE - 1] + "…"
