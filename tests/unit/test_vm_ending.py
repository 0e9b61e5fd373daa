"""Why a hypervisor ended, and what that makes its VM: QEMU's SHUTDOWN reasons, Cloud
Hypervisor's event stream, and the engine's mapping to a status, a reason and an event."""

from __future__ import annotations

import json
import signal

import pytest

from volant.engine.ending import judge_end
from volant.model import EndCause, EventType, HypervisorEnd, VMStatus
from volant.runtime.ch_events import events_end, parse_events
from volant.runtime.qemu_events import shutdown_end

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("guest-shutdown", EndCause.GUEST_POWEROFF),
        ("guest-reset", EndCause.GUEST_RESET),
        ("guest-panic", EndCause.GUEST_PANIC),
        ("host-qmp-quit", EndCause.HOST_REQUEST),
        ("host-signal", EndCause.HOST_REQUEST),
        ("host-ui", EndCause.HOST_REQUEST),
        ("host-error", EndCause.UNKNOWN),
        ("something-new", EndCause.UNKNOWN),
    ],
)
def test_qemu_shutdown_reasons(reason: str, cause: EndCause) -> None:
    assert shutdown_end({"guest": reason.startswith("guest"), "reason": reason}) == HypervisorEnd(
        cause, reason
    )


def test_no_qemu_shutdown_event_is_unknown() -> None:
    assert shutdown_end(None) == HypervisorEnd(EndCause.UNKNOWN, "")


def ch_stream(*events: tuple[str, str]) -> str:
    """Events as CH's monitor writes them: pretty JSON, each followed by a blank line."""
    return "".join(
        json.dumps(
            {
                "timestamp": {"secs": 0, "nanos": n},
                "source": source,
                "event": event,
                "properties": None,
            },
            indent=2,
        )
        + "\n\n"
        for n, (source, event) in enumerate(events)
    )


BOOTED = (("vmm", "starting"), ("vm", "booting"), ("vm", "booted"))
POWEROFF = (("vm", "shutdown"), ("vm", "deleted"), ("vmm", "shutdown"))


def test_ch_stream_parses_pretty_json_and_skips_a_partial_tail() -> None:
    text = ch_stream(*BOOTED)
    events = parse_events(text + text[:40])
    assert [(e["source"], e["event"]) for e in events] == list(BOOTED)
    assert parse_events("") == []


def test_ch_guest_poweroff_ends_in_a_shutdown() -> None:
    assert events_end(parse_events(ch_stream(*BOOTED, *POWEROFF))) == HypervisorEnd(
        EndCause.GUEST_POWEROFF, "vmm shutdown"
    )
    # CH's monitor thread may not have written the last event when the process ended.
    assert events_end(parse_events(ch_stream(*BOOTED, *POWEROFF[:2]))).cause is (
        EndCause.GUEST_POWEROFF
    )


def test_ch_stream_without_a_shutdown_is_unknown() -> None:
    killed = events_end(parse_events(ch_stream(*BOOTED)))
    assert killed == HypervisorEnd(EndCause.UNKNOWN, "last event vm booted")
    # A VM booted again after a shutdown (vm.boot) is running, whatever came before.
    again = events_end(parse_events(ch_stream(*BOOTED, ("vm", "shutdown"), *BOOTED[1:])))
    assert again.cause is EndCause.UNKNOWN
    assert events_end([]) == HypervisorEnd()


def test_guest_poweroff_is_a_stop_with_reason_guest() -> None:
    ending = judge_end(HypervisorEnd(EndCause.GUEST_POWEROFF, "guest-shutdown"), 0, stopped=False)
    assert ending.status is VMStatus.STOPPED
    assert ending.reason == "the guest powered itself off"
    assert (ending.event, ending.payload) == (EventType.VM_STOPPED, {"reason": "guest"})
    # Adopted from an earlier volantd: no exit status, the event alone decides.
    assert judge_end(HypervisorEnd(EndCause.GUEST_POWEROFF), None, stopped=False) == ending


def test_systemd_stopping_the_scope_is_a_stop() -> None:
    # systemd's stop job sends SIGTERM, so QEMU says host-signal; the stop job decides.
    ending = judge_end(HypervisorEnd(EndCause.HOST_REQUEST, "host-signal"), 0, stopped=True)
    assert (ending.status, ending.event) == (VMStatus.STOPPED, EventType.VM_STOPPED)
    assert ending.payload == {"reason": "scope stopped by systemd"}
    assert ending.reason == "systemd stopped its scope"


@pytest.mark.parametrize(
    ("end", "status", "reason"),
    [
        (
            HypervisorEnd(EndCause.GUEST_PANIC, "guest-panic"),
            0,
            "the guest kernel panicked",
        ),
        (
            HypervisorEnd(EndCause.GUEST_RESET, "guest-reset"),
            0,
            "the guest rebooted or reset itself (volant does not restart it)",
        ),
        (
            HypervisorEnd(EndCause.HOST_REQUEST, "host-signal"),
            0,
            "the hypervisor was ended from the host, not through volantd (host-signal)",
        ),
        (HypervisorEnd(), -signal.SIGKILL, "hypervisor killed by SIGKILL"),
        (HypervisorEnd(), 1, "hypervisor exited with status 1"),
        (HypervisorEnd(), 0, "hypervisor exited with status 0"),
        (HypervisorEnd(), None, "hypervisor ended without saying why (exit status unknown)"),
        (HypervisorEnd(), -200, "hypervisor killed by signal 200"),
    ],
)
def test_everything_else_is_a_crash_with_its_reason(
    end: HypervisorEnd, status: int | None, reason: str
) -> None:
    ending = judge_end(end, status, stopped=False)
    assert (ending.status, ending.reason, ending.event) == (
        VMStatus.CRASHED,
        reason,
        EventType.VM_CRASHED,
    )
    assert ending.payload == {"reason": reason, "cause": end.cause.value, "exit_status": status}
