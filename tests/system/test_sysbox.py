"""The sysbox harness: a real systemd in namespaces, and nothing left behind on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.sysbox import CGROUP_PREFIX, Sysbox, cgroup2_root, reap
from tests.system.conftest import sysbox_unavailable

pytestmark = pytest.mark.system

PROJECT = Path(__file__).resolve().parents[2]


def _wait_active(box: Sysbox, unit: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while box.run(["systemctl", "is-active", unit], check=False).returncode != 0:
        assert time.monotonic() < deadline, f"{unit} never became active"
        time.sleep(0.05)


def test_boots_fast_and_clean(sysbox: Sysbox) -> None:
    assert sysbox.boot is not None
    assert sysbox.boot.state == "running", sysbox.boot.failed_units
    assert sysbox.boot.seconds < 20
    state = sysbox.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state == "running"


def test_systemd_is_on_the_bus(sysbox: Sysbox) -> None:
    tree = sysbox.run(["busctl", "tree", "org.freedesktop.systemd1"]).stdout
    assert "/org/freedesktop/systemd1/unit" in tree


def test_polkit_is_on_the_bus(sysbox: Sysbox) -> None:
    status = sysbox.run(["busctl", "status", "org.freedesktop.PolicyKit1"]).stdout
    assert "Comm=polkitd" in status


def test_transient_scope_is_active(sysbox: Sysbox) -> None:
    scope = sysbox.spawn(["systemd-run", "--scope", "--unit=test-x.scope", "sleep", "30"])
    _wait_active(sysbox, "test-x.scope")
    status = sysbox.run(["systemctl", "status", "--no-pager", "test-x.scope"], check=False)
    assert "Active: active (running)" in status.stdout
    assert "sleep 30" in status.stdout
    sysbox.run(["systemctl", "stop", "test-x.scope"])
    assert scope.wait(timeout=10) != 0


@pytest.mark.skipif(shutil.which("machinectl") is None, reason="systemd-container missing")
def test_machined_answers(sysbox: Sysbox) -> None:
    assert "No machines." in sysbox.run(["machinectl", "list"]).stdout


def test_only_loopback_and_it_is_up(sysbox: Sysbox) -> None:
    links = sysbox.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    assert len(links) == 1
    assert links[0].split()[1] == "lo:"
    assert "UP" in links[0].split()[2]


def test_writes_stay_in_the_overlay(sysbox: Sysbox) -> None:
    marker = f"etc/sysbox-test-{os.getpid()}"
    (sysbox.root / marker).write_text("from the host\n")
    assert sysbox.run(["cat", f"/{marker}"]).stdout == "from the host\n"
    sysbox.run(["sh", "-c", f"echo inside > /{marker}-inner"])
    assert not Path(f"/{marker}").exists()
    assert not Path(f"/{marker}-inner").exists()


def test_project_and_venv_work_inside(sysbox: Sysbox) -> None:
    probe = sysbox.run(
        [sys.executable, "-c", "import sdbus, volant; print('ok')"], cwd=str(PROJECT)
    )
    assert probe.stdout == "ok\n"


def test_commands_run_in_the_sandbox_cgroup_tree(sysbox: Sysbox) -> None:
    cgroup = sysbox.run(["cat", "/proc/self/cgroup"]).stdout
    assert "0::/sysbox-exec-" in cgroup
    assert sysbox.run(["test", "-d", "/sys/fs/cgroup/init.scope"]).returncode == 0


def test_environment_is_clean(sysbox: Sysbox) -> None:
    env = dict(
        line.split("=", 1) for line in sysbox.run(["env"], env={"X": "1"}).stdout.splitlines()
    )
    assert env["X"] == "1"
    assert "DBUS_SESSION_BUS_ADDRESS" not in env
    assert "/usr/bin" in env["PATH"]


def test_run_passes_input_and_kills_what_times_out(sysbox: Sysbox) -> None:
    assert sysbox.run(["cat"], input="through stdin\n").stdout == "through stdin\n"
    with pytest.raises(subprocess.TimeoutExpired):
        sysbox.run(["sh", "-c", "echo $$ > /tmp/timed-out.pid; exec sleep 30"], timeout=1)
    pid = sysbox.run(["cat", "/tmp/timed-out.pid"]).stdout.strip()
    # Killed at once; reaped by systemd (its new parent) a moment later.
    gone = "while test -e /proc/$0; do sleep 0.05; done"
    sysbox.run(["timeout", "5", "sh", "-c", gone, pid])
    assert [p.name for p in sysbox.cgroup.glob("sysbox-exec-*")] == []


def test_reap_spares_live_sandboxes(sysbox: Sysbox) -> None:
    assert sysbox.cgroup.name not in reap()
    assert sysbox.run(["true"]).returncode == 0


def _namespace_users(link: str) -> list[int]:
    users = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / link.split(":", maxsplit=1)[0]) == link:
                    users.append(int(entry.name))
            except OSError:
                continue
    return users


def _boot_and_fail(seen: dict[str, object]) -> None:
    with Sysbox() as box:
        seen.update(box=box, cgroup=box.cgroup, pid=box.pid)
        seen["namespaces"] = [
            os.readlink(f"/proc/{box.pid}/ns/{ns}") for ns in ("pid", "mnt", "net")
        ]
        box.run(["systemd-run", "--unit=stray", "sleep", "300"])
        raise RuntimeError("test failure")


def test_teardown_leaves_nothing_even_on_error() -> None:
    reason = sysbox_unavailable()
    if reason:
        pytest.skip(reason)
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="test failure"):
        _boot_and_fail(seen)
    box, cgroup, namespaces = seen["box"], seen["cgroup"], seen["namespaces"]
    assert isinstance(box, Sysbox)
    assert isinstance(cgroup, Path)
    assert isinstance(namespaces, list)
    assert not cgroup.exists()
    assert not Path(f"/proc/{seen['pid']}").exists()
    for link in namespaces:
        assert _namespace_users(link) == []
    # Every mount of the sandbox has "sysbox" as its source, and none may show on the host.
    assert " sysbox " not in Path("/proc/self/mountinfo").read_text()
    assert not box.log_path.exists()


def test_two_sandboxes_side_by_side(sysbox: Sysbox) -> None:
    with Sysbox() as other:
        assert other.cgroup != sysbox.cgroup
        for box in (sysbox, other):
            box.spawn(["systemd-run", "--scope", "--unit=twin.scope", "sleep", "30"])
            _wait_active(box, "twin.scope")
        assert len(list(cgroup2_root().glob(f"{CGROUP_PREFIX}*"))) >= 2
    assert sysbox.run(["systemctl", "is-active", "twin.scope"]).stdout.strip() == "active"
