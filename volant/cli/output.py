"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

VM_COLUMNS = (
    ("NAME", "name"),
    ("STATUS", "status"),
    ("IP", "ip_address"),
    ("CPUS", "cpu_cores"),
    ("MEMORY", "memory_mb"),
    ("PLUGIN", "plugin"),
    ("PID", "pid"),
    ("UNIT", "unit"),
)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if key == "memory_mb":
        return f"{value} MiB"
    return str(value)


def vm_table(vms: Sequence[dict[str, Any]]) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for title, _key in VM_COLUMNS:
        table.add_column(title, no_wrap=True)
    for vm in vms:
        table.add_row(*(_cell(key, vm.get(key)) for _title, key in VM_COLUMNS))
    Console(soft_wrap=True).print(table)


def vm_details(vm: dict[str, Any]) -> None:
    width = max(len(key) for key in vm)
    for key, value in vm.items():
        click.echo(f"{key + ':':<{width + 1}} {_cell(key, value)}")
