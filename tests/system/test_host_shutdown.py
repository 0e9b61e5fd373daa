"""Host shutdown: guests get an ACPI power-down before their scopes go; proven by a poweroff of
the whole sysbox, with volantd's state directory on the host so the console log survives."""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import ROOT, VolantBox
from tests.integration.daemon import GUEST_DIR, build_guest

pytestmark = pytest.mark.system


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Under the checkout, which every sysbox binds in (and outside volantd's PrivateTmp).
    path = ROOT / ".cache" / f"test-shutdown-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_gone(box: Sysbox, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{box.pid}").exists():
        assert time.monotonic() < deadline, "the sysbox did not power off"
        time.sleep(0.5)


def test_poweroff_powers_guests_down_first(sysbox: Sysbox, state_dir: Path) -> None:
    if not (GUEST_DIR / "vmlinuz").exists() or not (GUEST_DIR / "initramfs.img").exists():
        build_guest()
    vb = VolantBox(sysbox, service_extra=f"ReadWritePaths={state_dir}\n")
    vb.install({"state_dir": str(state_dir)})
    vm = vb.api("POST", "/api/v1/vms", {"name": "guest", "plugin": "demo"}).body
    assert "guest" in vb.guest_answer(vm["ip_address"])

    vb.run("systemctl", "poweroff", "--no-block")
    wait_gone(sysbox, timeout=120)

    # The guest kernel's own power-off path (acpid ran poweroff on the button); a hypervisor
    # killed by SIGTERM would leave the log at the guest's last line before it.
    console = (state_dir / "consoles" / "guest.log").read_text(errors="replace")
    tail = console[console.index("volant-init: ready") :]
    assert "ACPI: PM: Preparing to enter system sleep state S5" in tail, tail
    assert "reboot: Power down" in tail, tail
    with sqlite3.connect(state_dir / "state.db") as db:
        assert db.execute("SELECT status FROM vms WHERE name = 'guest'").fetchone() == ("stopped",)
        last = db.execute("SELECT type FROM events ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ("VM_STOPPED",)
