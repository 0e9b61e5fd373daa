"""SystemdSupervisor against a real systemd: scopes, limits, the gate, crashes, kill, adoption.

The supervisor runs inside the sysbox (tests/system/scripts/supervisor_probe.py, driven over
its stdin/stdout); the checks look at systemd from outside with `box.run`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.sysbox import Sysbox

pytestmark = pytest.mark.system

PROJECT = Path(__file__).resolve().parents[2]
PROBE = "tests/system/scripts/supervisor_probe.py"
UNIT = "volant-vm-probe\\x2d1.scope"


class Probe:
    """The supervisor process inside the sandbox: send commands, read replies and exits."""

    def __init__(self, box: Sysbox) -> None:
        self.proc = box.spawn([sys.executable, PROBE], cwd=str(PROJECT))
        self.exits: list[dict[str, Any]] = []
        assert self._read().get("ready") is True

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"probe died with status {self.proc.wait()}"
        message: dict[str, Any] = json.loads(line)
        return message

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        while (message := self._read()).get("event") == "exit":
            self.exits.append(message)
        return message

    def next_exit(self) -> dict[str, Any]:
        if self.exits:
            return self.exits.pop(0)
        message = self._read()
        assert message.get("event") == "exit", message
        return message

    def launch(self, name: str, argv: list[str]) -> dict[str, Any]:
        return self.call(op="launch", name=name, argv=argv, cpus=1, memory_mb=64)

    def quit(self) -> None:
        assert self.call(op="quit").get("closed") is True
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture
def probe(sysbox: Sysbox) -> Iterator[Probe]:
    probe = Probe(sysbox)
    yield probe
    if probe.proc.poll() is None:
        probe.quit()


def _show(box: Sysbox, unit: str, *props: str) -> dict[str, str]:
    out = box.run(["systemctl", "show", "-p", ",".join(props), unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _unit_gone(box: Sysbox, unit: str) -> bool:
    state = box.run(["systemctl", "is-active", unit], check=False).stdout.strip()
    return state in ("inactive", "failed")


def _cgroup_writer(path: str) -> list[str]:
    # The hypervisor's first instruction records where it runs.
    return ["sh", "-c", f"cat /proc/self/cgroup > {path}; exec sleep 300"]


def test_launch_places_the_hypervisor_in_its_scope(sysbox: Sysbox, probe: Probe) -> None:
    launched = probe.launch("probe-1", _cgroup_writer("/tmp/probe-1.cgroup"))
    assert launched == {"ok": True, "pid": launched["pid"], "unit": UNIT}
    assert sysbox.run(["systemctl", "is-active", UNIT]).stdout.strip() == "active"
    props = _show(
        sysbox,
        UNIT,
        "MemoryMax",
        "TasksMax",
        "CPUQuotaPerSecUSec",
        "Slice",
        "CollectMode",
        "Before",
    )
    assert props["Slice"] == "volant.slice"
    assert props["MemoryMax"] == str(128 * 1024 * 1024)  # 64 MiB of guest + 64 MiB headroom
    assert props["TasksMax"] == "256"
    assert props["CPUQuotaPerSecUSec"] == "1s"
    assert props["CollectMode"] == "inactive-or-failed"
    assert "volantd.service" in props["Before"].split()
    cgroup = _show(sysbox, UNIT, "ControlGroup")["ControlGroup"]
    assert cgroup == "/volant.slice/" + UNIT
    procs = sysbox.run(["cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs"]).stdout.split()
    assert str(launched["pid"]) in procs
    first = sysbox.run(["cat", "/tmp/probe-1.cgroup"]).stdout
    assert first.strip().endswith(f"::{cgroup}")
    assert "Volant VM probe-1" in sysbox.run(["systemctl", "status", "--no-pager", UNIT]).stdout

    sysbox.run(["kill", "-9", str(launched["pid"])])
    assert probe.next_exit() == {
        "event": "exit", "name": "probe-1", "pid": launched["pid"], "status": -9,
        "stopped": False,
    }  # fmt: skip
    assert _unit_gone(sysbox, UNIT)


def test_systemctl_stop_is_reported_as_stopped(sysbox: Sysbox, probe: Probe) -> None:
    launched = probe.launch("probe-4", ["sleep", "300"])
    sysbox.run(["systemctl", "stop", launched["unit"]])
    exit_ = probe.next_exit()
    assert (exit_["pid"], exit_["status"], exit_["stopped"]) == (launched["pid"], -15, True)


def test_kill_ends_the_scope(sysbox: Sysbox, probe: Probe) -> None:
    launched = probe.launch("probe-2", ["sleep", "300"])
    assert launched["unit"] == "volant-vm-probe\\x2d2.scope"
    assert probe.call(op="kill", name="probe-2") == {"ok": True}
    assert _unit_gone(sysbox, launched["unit"])
    assert probe.next_exit()["status"] == -9
    assert sysbox.run(["test", "-e", f"/proc/{launched['pid']}"], check=False).returncode != 0


def test_refused_scope_never_runs_the_hypervisor(sysbox: Sysbox, probe: Probe) -> None:
    squatter = sysbox.spawn(
        ["systemd-run", "--scope", "--unit=volant-vm-clash.scope", "sleep", "300"]
    )
    deadline_tries = 200
    while sysbox.run(["systemctl", "is-active", "volant-vm-clash.scope"], check=False).returncode:
        deadline_tries -= 1
        assert deadline_tries, "squatting scope never started"
    reply = probe.launch("clash", ["sh", "-c", "touch /tmp/clash-ran; exec sleep 300"])
    assert reply["code"] == "HypervisorFailed"
    assert "refused" in reply["error"]
    assert sysbox.run(["test", "-e", "/tmp/clash-ran"], check=False).returncode == 1
    sysbox.run(["systemctl", "stop", "volant-vm-clash.scope"])
    squatter.wait(timeout=10)


def test_exit_status_of_a_hypervisor_that_ends(sysbox: Sysbox, probe: Probe) -> None:
    launched = probe.launch("quick", ["sh", "-c", "exit 7"])
    assert probe.next_exit() == {
        "event": "exit",
        "name": "quick",
        "pid": launched["pid"],
        "status": 7,
        "stopped": False,
    }
    assert _unit_gone(sysbox, launched["unit"])


def test_adopt_after_a_daemon_restart(sysbox: Sysbox) -> None:
    first = Probe(sysbox)
    launched = first.launch("probe-3", ["sleep", "300"])
    first.quit()  # the daemon goes away; the scope and its hypervisor stay
    assert sysbox.run(["systemctl", "is-active", launched["unit"]]).stdout.strip() == "active"

    second = Probe(sysbox)
    try:
        pid, unit = launched["pid"], launched["unit"]
        assert second.call(op="adopt", name="probe-3", pid=pid + 1, unit=unit) == {"ok": False}
        assert second.call(op="adopt", name="nope", pid=pid, unit="volant-vm-nope.scope") == {
            "ok": False
        }
        assert second.call(op="adopt", name="probe-3", pid=pid, unit=unit) == {"ok": True}
        sysbox.run(["kill", "-9", str(pid)])
        assert second.next_exit() == {
            "event": "exit",
            "name": "probe-3",
            "pid": pid,
            "status": None,
            "stopped": False,
        }
        assert _unit_gone(sysbox, unit)
    finally:
        second.quit()


def test_probe_leaves_no_scopes(sysbox: Sysbox) -> None:
    units = sysbox.run(["systemctl", "list-units", "--plain", "--no-legend", "volant-vm-*"])
    assert units.stdout.strip() == ""


def test_probe_python_is_the_project_venv() -> None:
    # The probe relies on the sysbox seeing the same interpreter and packages as the host.
    assert subprocess.run([sys.executable, "-c", "import sdbus"], check=False).returncode == 0
