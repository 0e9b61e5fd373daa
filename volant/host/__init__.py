"""Host integration: where hypervisor processes live (systemd scopes, or plain children).

`make_supervisor` picks the backend; both satisfy volant.engine.ports.Supervisor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from volant.host.machined import MachineRegistry
from volant.host.process import ProcessSupervisor
from volant.host.systemd import SystemdSupervisor
from volant.host.units import escape_unit_name, scope_name

SupervisorKind = Literal["auto", "systemd", "process"]


def systemd_is_pid1(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """True when systemd is the init system here (sd_booted(): /run/systemd/system exists)."""
    return run_dir.is_dir()


def make_supervisor(kind: str = "auto", owner: str = "") -> SystemdSupervisor | ProcessSupervisor:
    """The supervisor for kind: "systemd", "process", or "auto" (systemd when it is PID 1).

    owner tags the hypervisors a process supervisor starts (the daemon's state directory)."""
    if kind == "auto":
        kind = "systemd" if systemd_is_pid1() else "process"
    if kind == "systemd":
        return SystemdSupervisor()
    if kind == "process":
        return ProcessSupervisor(owner)
    raise ValueError(f"unknown supervisor kind {kind!r}: expected auto, systemd or process")


__all__ = [
    "MachineRegistry",
    "ProcessSupervisor",
    "SupervisorKind",
    "SystemdSupervisor",
    "escape_unit_name",
    "make_supervisor",
    "scope_name",
    "systemd_is_pid1",
]
