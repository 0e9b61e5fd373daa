"""Under a real systemd: a guest that powers itself off after `systemctl restart volantd` has
re-adopted its scope is `stopped` (VM_STOPPED, reason guest), its scope and machine are gone,
and the journal says why."""

from __future__ import annotations

import shlex

import pytest

from scripts.volantbox import VENV_BIN, VolantBox

pytestmark = pytest.mark.system


def poweroff_from_inside(vb: VolantBox, name: str) -> None:
    """Type `poweroff` into the guest's console shell (again every 2 s, in case the shell is not
    up yet) until the console closes."""
    volar = shlex.quote(str(VENV_BIN / "volar"))
    loop = f"for i in $(seq 60); do echo poweroff; sleep 2; done | {volar} vms console {name}"
    vb.run("/bin/sh", "-c", loop, timeout=180)


def test_guest_poweroff_after_a_restart_is_a_stop(volantd: VolantBox) -> None:
    reply = volantd.api("POST", "/api/v1/vms", {"name": "solo", "plugin": "demo"})
    assert reply.status == 201, reply
    assert "solo" in volantd.guest_answer(reply.body["ip_address"])
    volantd.sh("systemctl restart volantd")
    volantd.wait_healthy()
    assert volantd.vm("solo")["status"] == "running"
    assert "adopted VM solo" in volantd.journal(lines=200)

    poweroff_from_inside(volantd, "solo")
    vm = volantd.wait_status("solo", "stopped", timeout=60)
    assert (vm["pid"], vm["status_reason"]) == (None, "the guest powered itself off")
    last = volantd.api("GET", "/api/v1/events?vm=solo").body["events"][-1]
    assert (last["type"], last["payload"]["reason"]) == ("VM_STOPPED", "guest")
    assert "VM solo stopped: the guest powered itself off" in volantd.journal(lines=200)
    assert volantd.run("systemctl", "is-active", "volant-vm-solo.scope").returncode != 0
    assert "solo" not in volantd.sh("machinectl list --no-legend --no-pager")
    assert volantd.api("DELETE", "/api/v1/vms/solo").status == 204
