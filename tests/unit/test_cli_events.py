"""`volar events` output and options, with no daemon behind it (the live path is in
tests/integration/test_events.py)."""

from __future__ import annotations

from datetime import datetime

import click
import pytest

from tests.unit.run_volar import volar
from volant.cli.events import _types
from volant.cli.output import event_line

pytestmark = pytest.mark.unit

EVENT = {
    "id": 7,
    "ts": "2025-01-02T03:04:05.678901+00:00",
    "type": "VM_ERROR",
    "vm": "web",
    "payload": {"pid": None, "ip_address": "192.168.127.2", "reason": "r" * 100, "status": "error"},
}


def test_event_line_local_time_status_first_and_short_values() -> None:
    day, clock, kind, vm, *fields = event_line(EVENT).split(" ")
    local = datetime.fromisoformat(str(EVENT["ts"])).astimezone().replace(tzinfo=None)
    assert (day, clock) == (
        local.date().isoformat(),
        local.time().isoformat(timespec="milliseconds"),
    )
    assert (kind, vm) == ("VM_ERROR", "web")
    assert fields[:2] == ["status=error", "ip_address=192.168.127.2"]
    assert fields[2].startswith("reason=rrr")
    assert fields[2].endswith("…")
    assert len(fields[2]) == len("reason=") + 60
    assert len(fields) == 3  # pid is None: left out


def test_event_line_survives_odd_events() -> None:
    assert event_line({"type": "VM_CREATED", "ts": "garbage", "payload": []}) == (
        "garbage VM_CREATED -"
    )


def test_types_repeat_comma_and_case() -> None:
    ctx = click.Context(click.Command("x"))
    param = click.Option(["--type"])
    assert _types(ctx, param, ("vm_created, VM_RUNNING", "VM_DELETED", "")) == [
        "VM_CREATED",
        "VM_RUNNING",
        "VM_DELETED",
    ]


def test_events_refuses_a_negative_since() -> None:
    code, _out, err = volar("events", "--since", "-1")
    assert code == 2
    assert "--since" in err


def test_unreachable_daemon_fails_at_once() -> None:
    code, _out, err = volar("--api", "unix:/nonexistent/volantd.sock", "events")
    assert code == 1
    assert "cannot reach volantd" in err
    assert "reconnecting" not in err
