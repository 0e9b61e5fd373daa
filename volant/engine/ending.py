"""What a hypervisor's end that volantd did not ask for means for its VM (docs/lifecycle.md).

The inputs are what the supervisor saw (exit status, whether systemd stopped the scope) and what
the hypervisor itself said before it went (HypervisorEnd). A guest that powered itself off is
`stopped`; everything else that volantd did not ask for is `crashed`, with the reason.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from volant.model import EndCause, EventType, HypervisorEnd, VMStatus, VolantError

GUEST = "guest"  # VM_STOPPED's reason when the guest powered itself off
SCOPE_STOPPED = "scope stopped by systemd"


@dataclass(frozen=True)
class Ending:
    """The VM's new status, the reason recorded with it, and the event to emit."""

    status: VMStatus
    reason: str
    event: EventType
    payload: dict[str, Any] = field(default_factory=dict)


def judge_end(end: HypervisorEnd, exit_status: int | None, *, stopped: bool) -> Ending:
    """The Ending of a VM whose hypervisor ended unasked; stopped: systemd stopped its scope."""
    if stopped:
        return Ending(
            VMStatus.STOPPED,
            "systemd stopped its scope",
            EventType.VM_STOPPED,
            {"reason": SCOPE_STOPPED},
        )
    if end.cause is EndCause.GUEST_POWEROFF:
        reason = "the guest powered itself off"
        return Ending(VMStatus.STOPPED, reason, EventType.VM_STOPPED, {"reason": GUEST})
    reason = _crash_reason(end, exit_status)
    payload = {"reason": reason, "cause": end.cause.value, "exit_status": exit_status}
    return Ending(VMStatus.CRASHED, reason, EventType.VM_CRASHED, payload)


def _crash_reason(end: HypervisorEnd, exit_status: int | None) -> str:
    match end.cause:
        case EndCause.GUEST_PANIC:
            return "the guest kernel panicked"
        case EndCause.GUEST_RESET:
            return "the guest rebooted or reset itself (volant does not restart it)"
        case EndCause.HOST_REQUEST:
            return f"the hypervisor was ended from the host, not through volantd ({end.detail})"
    return _exit_text(exit_status)


def _exit_text(exit_status: int | None) -> str:
    if exit_status is None:
        return "hypervisor ended without saying why (exit status unknown)"
    if exit_status < 0:
        try:
            name = signal.Signals(-exit_status).name
        except ValueError:
            name = f"signal {-exit_status}"
        return f"hypervisor killed by {name}"
    return f"hypervisor exited with status {exit_status}"


def failure_reason(exc: BaseException) -> str:
    """One line for status_reason and events: a VolantError's message, else the exception's."""
    if isinstance(exc, VolantError):
        return exc.message
    return str(exc) or type(exc).__name__
