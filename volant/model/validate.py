"""Validation of user input that every front-end shares."""

from __future__ import annotations

import re

from volant.model.errors import InvalidArgument

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DNS_LABEL = f"^{NAME_RE.pattern}$"  # NAME_RE anchored, for JSON Schema and OpenAPI documents
# What a name prefix filter may hold: any start of a name, so also "" and a trailing "-".
PREFIX_RE = re.compile(r"[a-z0-9-]{0,63}")
RESERVED_KERNEL_KEYS = ("volant.", "ip=", "init=", "rdinit=")
CMDLINE_MAX = 2047


NAME_RULE = "a DNS label (a-z, 0-9, '-', 1-63 characters, not starting or ending with '-')"


def validate_name(name: str, what: str = "VM") -> str:
    """A VM or plugin name is a DNS label: it ends up in unit names, paths and hostnames."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid {what} name {name!r}: must be {NAME_RULE}", field="name")
    return name


def validate_range(field: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(
            f"{field} must be an integer between {low} and {high}, got {value!r}", field=field
        )
    return value


def validate_kernel_args(args: str) -> str:
    """Extra kernel arguments: printable ASCII, no keys Volant reserves for itself."""
    if not isinstance(args, str):
        raise InvalidArgument("kernel_args must be a string", field="kernel_args")
    if any(not (0x20 <= ord(c) < 0x7F) for c in args):
        raise InvalidArgument(
            "kernel_args must be printable ASCII without control characters", field="kernel_args"
        )
    if len(args) > CMDLINE_MAX:
        raise InvalidArgument(
            f"kernel_args is longer than {CMDLINE_MAX} characters", field="kernel_args"
        )
    for token in args.split():
        lowered = token.lower()
        for key in RESERVED_KERNEL_KEYS:
            if lowered.startswith(key) or lowered == key.rstrip("="):
                raise InvalidArgument(
                    f"kernel_args may not set {token.split('=')[0]!r}: Volant sets it itself",
                    field="kernel_args",
                )
    return " ".join(args.split())
