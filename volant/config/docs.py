"""The settings table as documentation: a commented volantd.yaml with every default.

`volantd --print-defaults` prints it and the Debian package ships it as /etc/volant/volantd.yaml,
so both come from SETTINGS and cannot drift from the loader.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from volant.config.settings import SETTINGS, Setting

WIDTH = 99
HEADER = """\
# volantd configuration. Every setting is listed, commented out, with its default; uncomment a
# setting (and its section line) to change it. An empty value means the default.
# Layers, later wins: /usr/lib/volant/volantd.yaml, /etc/volant/volantd.yaml, drop-ins in
# /etc/volant/volantd.yaml.d/*.yaml (sorted), then VOLANT_* environment variables.
# `systemctl restart volantd` applies a change.
"""


def _scalar(value: Any) -> str:
    """A default as YAML text; None (computed at start) is an empty value."""
    if value is None:
        return ""
    if isinstance(value, Path):
        value = str(value)
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return " " + text.removesuffix("\n").removesuffix("\n...").strip()


def _meaning(setting: Setting) -> str:
    """The setting's help, and its choices when it has some."""
    choices = f" One of: {', '.join(setting.choices)}." if setting.choices else ""
    return setting.help + choices


def _help(setting: Setting, indent: str) -> list[str]:
    text = f"{_meaning(setting)} Environment: {setting.env}."
    return textwrap.wrap(text, WIDTH, initial_indent=indent + "# ", subsequent_indent=indent + "# ")


def defaults_yaml() -> str:
    """Every setting, commented out, grouped by section, each under its help text."""
    lines = [HEADER]
    section = ""
    for setting in SETTINGS:
        head, _, leaf = setting.name.rpartition(".")
        if head != section:
            lines += ["", f"#{head}:"] if lines[-1] else [f"#{head}:"]
            section = head
        indent = "  " if head else ""
        lines.extend(_help(setting, indent))
        lines.append(f"{indent}#{leaf}:{_scalar(setting.default)}")
        if not head:
            lines.append("")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The settings table as a Markdown table for the README's configuration reference."""
    rows = [
        "| setting | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for setting in SETTINGS:
        default = _scalar(setting.default).strip()
        if setting.default is None:
            default = "computed"
        elif default == "''":
            default = "empty"
        else:
            default = f"`{_cell(default)}`"
        meaning = _cell(_meaning(setting))
        rows.append(f"| `{setting.name}` | `{setting.env}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
