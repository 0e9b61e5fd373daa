"""What `volar vms create|start` shows while a VM boots, against a scripted stand-in for
volantd (tests/unit/volantd_standin.py); the real daemon, and a real terminal, are in
tests/integration/test_cli_volar.py."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.terminal import HIDE_CURSOR, SHOW_CURSOR, in_pty, last_line
from tests.unit.run_volar import volar
from tests.unit.volantd_standin import IP, StandIn
from volant.cli import progress
from volant.cli.progress import final_line

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
VOLAR = "import sys; from volant.cli.main import main; sys.argv[0] = 'volar'; main()"
FINAL = re.compile(r"^VM (\S+) is (\S+)(?: \((.*)\))? at (\S+) \((\d+\.\d) s\)$")


class Recorder:
    """A StatusLine that is always on and remembers what it showed."""

    shown: list[str]

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        Recorder.shown = []

    def __enter__(self) -> Recorder:
        return self

    def update(self, text: str) -> None:
        Recorder.shown.append(text)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        Recorder.shown.append("<closed>")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    monkeypatch.setattr(progress, "StatusLine", Recorder)
    return Recorder


def test_create_follows_events_subscribed_before_the_request(
    standin: tuple[StandIn, str], recorder: type[Recorder]
) -> None:
    daemon, api = standin
    code, out, err = volar("--api", api, "vms", "create", "app", "--plugin", "hello")
    assert (code, err) == (0, "")
    match = FINAL.match(out.rstrip("\n"))
    assert match is not None, out
    assert match.group(1, 2, 4) == ("app", "running", IP)
    assert daemon.posted_while_watched == [True]
    assert recorder.shown[:3] == [
        "creating app…",
        "app: creating (192.168.127.2)…",
        f"app: starting ({IP})…",
    ]
    assert recorder.shown[-1] == "<closed>"


def test_health_gate_is_waited_for(standin: tuple[StandIn, str], recorder: type[Recorder]) -> None:
    _daemon, api = standin
    code, out, _err = volar("--api", api, "vms", "create", "gated1")
    assert code == 0
    assert FINAL.match(out.rstrip()).group(2) == "running"  # type: ignore[union-attr]
    assert f"gated1: starting ({IP}), waiting for its workload to be healthy…" in recorder.shown
    assert "gated1: running (192.168.127.2)…" in recorder.shown

    # Scripts asking for JSON get the daemon's answer at once, unless they ask to wait.
    code, out, _err = volar("--api", api, "vms", "create", "gated2", "--json")
    assert (code, '"status": "starting"' in out) == (0, True)
    code, out, _err = volar("--api", api, "vms", "create", "gated3", "--json", "--wait")
    assert (code, '"status": "running"' in out) == (0, True)
    code, out, _err = volar("--api", api, "vms", "create", "gated4", "--no-wait")
    assert FINAL.match(out.rstrip()).group(2) == "starting"  # type: ignore[union-attr]


def test_restart_waits_for_the_start_not_the_stop(
    standin: tuple[StandIn, str], recorder: type[Recorder]
) -> None:
    _daemon, api = standin
    code, out, _err = volar("--api", api, "vms", "restart", "late-gated")
    assert code == 0
    assert FINAL.match(out.rstrip()).group(2) == "running"  # type: ignore[union-attr]
    # The answer (starting) and the VM_STOPPED event race each other over two connections;
    # either way the stop is shown and does not end the wait.
    shown = recorder.shown
    assert shown[0] == "restarting late-gated…"
    assert shown.index(f"late-gated: stopped ({IP})…") < shown.index(f"late-gated: running ({IP})…")


def test_a_failed_health_gate_is_exit_1(
    standin: tuple[StandIn, str], recorder: type[Recorder]
) -> None:
    _daemon, api = standin
    code, out, err = volar("--api", api, "vms", "create", "gated-fail")
    assert code == 1
    assert FINAL.match(out.rstrip()).group(2, 3) == (  # type: ignore[union-attr]
        "error",
        "workload never got healthy",
    )
    assert err.splitlines() == [
        "volar: error: VM gated-fail did not boot: workload never got healthy",
        "hint: `volar vms console gated-fail --log` shows its boot, "
        "`volar vms logs gated-fail` its workload",
    ]


def test_without_an_event_stream_volar_polls(
    standin: tuple[StandIn, str], recorder: type[Recorder]
) -> None:
    _daemon, api = standin
    code, out, err = volar("--api", api, "vms", "create", "nostream-gated")
    assert (code, err) == (0, "")
    assert FINAL.match(out.rstrip()).group(2) == "running"  # type: ignore[union-attr]
    assert recorder.shown[0] == "creating nostream-gated…"


def test_start_and_a_refused_create(standin: tuple[StandIn, str], recorder: type[Recorder]) -> None:
    _daemon, api = standin
    code, out, _err = volar("--api", api, "vms", "start", "db")
    assert code == 0
    assert FINAL.match(out.rstrip()).group(1, 2) == ("db", "running")  # type: ignore[union-attr]
    assert recorder.shown[0] == "starting db…"
    code, out, err = volar("--api", api, "vms", "create", "taken")
    assert (code, out) == (1, "")
    assert err.splitlines() == ["volar: error: VM 'taken' already exists", "hint: pick another"]
    assert recorder.shown[-1] == "<closed>"


def test_not_a_terminal_means_no_status_line(standin: tuple[StandIn, str]) -> None:
    _daemon, api = standin
    code, out, err = volar("--api", api, "vms", "create", "quiet")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1
    assert not progress.StatusLine(True).enabled  # CliRunner's stderr is no terminal


def test_ctrl_c_on_a_terminal_is_130_and_leaves_it_clean(standin: tuple[StandIn, str]) -> None:
    _daemon, api = standin
    argv = [sys.executable, "-c", VOLAR, "--api", api, "vms", "create", "slow1"]
    env = os.environ | {"TERM": "xterm", "PYTHONPATH": str(ROOT)}
    code, screen = in_pty(argv, env, interrupt_on=f"slow1: starting ({IP})", timeout=30)
    assert code == 130, screen
    assert screen.rindex(SHOW_CURSOR) > screen.rindex(HIDE_CURSOR)
    assert last_line(screen) == (
        "volar: interrupted; volantd goes on creating slow1 (`volar vms get slow1` shows how "
        "far it got)"
    )


@pytest.mark.parametrize(
    ("vm", "line"),
    [
        ({"name": "a", "status": "running", "ip_address": IP}, f"VM a is running at {IP} (1.2 s)"),
        ({"name": "b", "status": "running", "ip_address": None}, "VM b is running (1.2 s)"),
        (
            {"name": "c", "status": "error", "ip_address": IP, "status_reason": "boom"},
            f"VM c is error (boom) at {IP} (1.2 s)",
        ),
    ],
)
def test_final_line(vm: dict[str, Any], line: str) -> None:
    assert final_line(vm, 1.23) == line
