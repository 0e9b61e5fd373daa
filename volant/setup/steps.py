"""The setup steps that are plain files: directories and the ip_forward sysctl drop-in.

Every step answers the same four questions: what it is (`describe`), whether it is already in
place, how to make it (returning what it made, for the record) and how to take back exactly that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from volant.network import forwarding_enabled


class Step(Protocol):
    """One idempotent piece of host preparation."""

    key: str

    def describe(self) -> str: ...

    async def preflight(self) -> None:
        """Raise when the step cannot be made here; runs for every step before any change."""
        ...

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        """Raise when taking back what was made would do harm (force: do it anyway); runs
        for every step before any undo."""
        ...

    async def in_place(self) -> bool: ...

    async def apply(self) -> dict[str, Any]:
        """Make it; return what was made, as JSON, for `revert`."""
        ...

    async def revert(self, made: dict[str, Any]) -> str:
        """Take back what `apply` made; return why something was kept, or ""."""
        ...


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace path atomically with text (a reader sees the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


class DirectoryStep:
    """A directory volantd or the operator needs; removed on undo only if setup made it and it
    is empty."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.key = f"directory:{path}"

    def describe(self) -> str:
        return f"directory {self.path} ({self.mode:04o})"

    async def preflight(self) -> None:
        pass

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        pass

    async def in_place(self) -> bool:
        return self.path.is_dir()

    async def apply(self) -> dict[str, Any]:
        self.path.mkdir(mode=self.mode, parents=True)
        self.path.chmod(self.mode)  # mkdir's mode passes through the umask
        return {}

    async def revert(self, made: dict[str, Any]) -> str:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return ""
        except OSError:
            return "kept: not empty"
        return ""


SYSCTL_TEXT = (
    "# Written by `volar setup`: the VMs on the volant bridge reach other networks through\n"
    "# this host (NAT in the nftables table inet volant). `volar setup --undo` removes it.\n"
    "net.ipv4.ip_forward = 1\n"
)


class ForwardingStep:
    """net.ipv4.ip_forward=1 now and at every boot (a sysctl.d drop-in)."""

    key = "sysctl"

    def __init__(self, dropin: Path, knob: Path) -> None:
        self.dropin = dropin
        self.knob = knob

    def describe(self) -> str:
        return f"sysctl net.ipv4.ip_forward=1 ({self.dropin})"

    async def preflight(self) -> None:
        pass

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        pass

    async def in_place(self) -> bool:
        return read_text(self.dropin) == SYSCTL_TEXT and forwarding_enabled(self.knob)

    def _current(self) -> str:
        return self.knob.read_text().strip()

    async def apply(self) -> dict[str, Any]:
        made = {"previous_file": read_text(self.dropin), "previous_value": self._current()}
        write_file(self.dropin, SYSCTL_TEXT)
        self.knob.write_text("1\n")
        return made

    async def revert(self, made: dict[str, Any]) -> str:
        previous_file = made.get("previous_file")
        if isinstance(previous_file, str):
            write_file(self.dropin, previous_file)
        else:
            self.dropin.unlink(missing_ok=True)
        previous = made.get("previous_value")
        if previous in ("0", "1") and self._current() != previous:
            self.knob.write_text(f"{previous}\n")
        return ""
