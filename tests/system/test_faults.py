"""Crash safety under a real systemd: volantd.service is SIGKILLed at every named step boundary
of every verb (volant/engine/faults.py), restarted by systemd, and the host must then agree
with the store: no orphan scope, QEMU, tap, machine, file or record, no VM stuck half-way, an
interrupted create or start in error with its reason, and a delete that cleans up fully.

Guests start paused (QEMU is real, its vCPUs wait), so each boundary costs seconds, not a boot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import VolantBox
from tests.integration.daemon import build_guest
from tests.integration.oci_images import image_layout
from tests.integration.rootfs_images import rootfs_image, rootfs_manifest, write_rootfs_plugin
from tests.system.hostcheck import orphans
from volant.engine.faults import STEPS

pytestmark = pytest.mark.system

FAULT_FILE = "/run/volant/fault"
SETTLING = ("creating", "starting", "stopping")
VM = "w"
BUILT = "built"  # the plugin the plugin-build walk builds from the test image
# The walked VM boots a rootfs plugin, so its writable disk is made, kept and removed on the
# walked paths (its guest never runs: paused, only the files matter).
PLUGIN = "rootapp"
# It publishes a port, so the rules are added, kept and removed on the walked paths too.
PUBLISH = ["8090:80"]
# A create or start that got as far as this boundary has finished its work: the VM runs.
DONE = "running"


@pytest.fixture(scope="module")
def volantd(sysbox: Sysbox) -> Iterator[VolantBox]:
    build_guest()
    vb = VolantBox(sysbox, service_extra=f"Environment=VOLANT_FAULT_FILE={FAULT_FILE}\n")
    vb.install(
        {"runtime.start_paused": True, "runtime.stop_timeout": 3, "vm.disk_size_mb": 64},
        plugins=("demo",),
    )
    inside = Path("/srv/volant-test")
    # No health check: a paused guest never answers one, and create must reach `running`.
    workload = rootfs_manifest(rootfs_image(), PLUGIN)["workload"]
    workload = {k: v for k, v in workload.items() if k not in ("health_check", "base_url")}
    workload["type"] = "process"
    directory = vb.box.root / inside.relative_to("/")
    manifest = write_rootfs_plugin(directory, PLUGIN, rootfs_image(), workload=workload)
    body = {"manifest": manifest.read_text(), "origin": (inside / manifest.name).as_uri()}
    assert vb.api("POST", "/api/v1/plugins", body).status == 201
    yield vb
    vb.run("systemctl", "stop", "volantd")


def vms(vb: VolantBox) -> list[dict[str, Any]]:
    reply = vb.api("GET", "/api/v1/vms")
    assert reply.status == 200, reply
    return list(reply.body["vms"])


def restarts(vb: VolantBox) -> int:
    return int(vb.scope_show("volantd.service", "NRestarts")["NRestarts"])


def settled(vb: VolantBox, timeout: float = 60) -> list[dict[str, Any]]:
    """The VMs once none is on its way between states (a resumed stop takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        current = vms(vb)
        if not any(vm["status"] in SETTLING for vm in current) or time.monotonic() > deadline:
            return current
        time.sleep(0.3)


def kill_at(vb: VolantBox, point: str, call: Callable[[], object]) -> None:
    """Arm the boundary, make the call that passes it, and wait for systemd's restart."""
    before = restarts(vb)
    (vb.box.root / FAULT_FILE.lstrip("/")).write_text(point)
    with contextlib.suppress(AssertionError):  # curl's connection died with the daemon
        call()
    deadline = time.monotonic() + 60
    while restarts(vb) == before:
        assert time.monotonic() < deadline, f"volantd never reached {point}:\n{vb.journal()}"
        time.sleep(0.2)
    assert not (vb.box.root / FAULT_FILE.lstrip("/")).exists()
    vb.wait_healthy(60)
    assert f"fault injection: SIGKILL at {point}" in vb.journal(lines=400)


VOLUME = "vol"
VOLUMES = "/api/v1/volumes"


def prepare(vb: VolantBox, verb: str) -> None:
    """The state each verb starts from."""
    if verb == "plugin-build":
        vb.api("DELETE", f"/api/v1/plugins/{BUILT}")
        return
    if verb.startswith("volume-"):
        if verb != "volume-create":
            assert vb.api("POST", VOLUMES, {"name": VOLUME, "size": "32M"}).status == 201
        if verb == "volume-resize":
            # Formatted by a VM's start (so the resize grows a file system), then free again.
            body = {"name": VM, "plugin": "demo", "volumes": [{"name": VOLUME, "path": "/data"}]}
            assert vb.api("POST", "/api/v1/vms", body).status == 201
            assert vb.api("DELETE", f"/api/v1/vms/{VM}").status == 204
        return
    if verb == "plugin-install":
        vb.api("DELETE", "/api/v1/plugins/spare")
        return
    if verb == "plugin-remove":
        vb.install_test_plugin("spare")
        return
    if verb == "create":
        return
    body = {"name": VM, "plugin": PLUGIN, "publish": PUBLISH}
    assert vb.api("POST", "/api/v1/vms", body).status == 201
    if verb == "start":
        assert vb.api("POST", f"/api/v1/vms/{VM}/stop").status == 200


def call(vb: VolantBox, verb: str) -> Callable[[], object]:
    if verb == "plugin-build":
        body = {"image": f"oci:{image_layout()}:app", "name": BUILT}
        return lambda: vb.api("POST", "/api/v1/plugins/build", body)
    if verb == "volume-create":
        return lambda: vb.api("POST", VOLUMES, {"name": VOLUME, "size": "32M"})
    if verb == "volume-resize":
        return lambda: vb.api("POST", f"{VOLUMES}/{VOLUME}/resize", {"size": "64M"})
    if verb == "volume-delete":
        return lambda: vb.api("DELETE", f"{VOLUMES}/{VOLUME}")
    if verb == "create":
        created: dict[str, Any] = {"name": VM, "plugin": PLUGIN, "publish": PUBLISH}
        return lambda: vb.api("POST", "/api/v1/vms", created)
    if verb == "plugin-install":
        return lambda: vb.install_test_plugin("spare")
    if verb == "plugin-remove":
        return lambda: vb.api("DELETE", "/api/v1/plugins/spare")
    if verb == "delete":
        return lambda: vb.api("DELETE", f"/api/v1/vms/{VM}")
    return lambda: vb.api("POST", f"/api/v1/vms/{VM}/{verb}")


def expected_status(verb: str, step: str) -> set[str]:
    """Where VM w may be after a kill at verb:step and the restart."""
    if verb in ("create", "start"):
        return {"running"} if step == DONE else {"error"}
    if verb == "stop":
        return {"stopped"}
    if verb == "restart":
        launch = STEPS["start"]
        if step not in launch:
            return {"stopped"}  # the stop part: the restart finishes that stop, not the start
        return {"running"} if step == DONE else {"error"}
    return {"running", "crashed", "stopped", "gone"}  # delete: run again below


POINTS = [(verb, step) for verb, steps in STEPS.items() for step in steps]


@pytest.mark.parametrize(("verb", "step"), POINTS, ids=[f"{v}:{s}" for v, s in POINTS])
def test_kill_at_every_boundary(volantd: VolantBox, verb: str, step: str) -> None:
    prepare(volantd, verb)
    kill_at(volantd, f"{verb}:{step}", call(volantd, verb))
    current = settled(volantd)
    stuck = [vm["name"] for vm in current if vm["status"] in SETTLING]
    assert not stuck, f"stuck after {verb}:{step}: {current}"
    assert orphans(volantd, current) == [], volantd.journal(lines=120)

    if verb == "plugin-build":
        check_build_left_nothing(volantd, installed=step == "installed")
        return
    if verb.startswith("volume-"):
        check_volume_after(volantd, verb, step)
        return
    if verb.startswith("plugin-"):
        # Install is killed before it records the plugin, remove after it deleted it.
        assert volantd.api("GET", "/api/v1/plugins/spare").status == 404
        # What the killed daemon cached or half-wrote for it was pruned at start: only the
        # demo plugin's initramfs and the rootfs plugin's image are left.
        artifacts = "/var/lib/volant/artifacts"
        assert len(volantd.sh(f"ls -A {artifacts}/sha256").split()) == 2
        assert volantd.sh(f"ls -A {artifacts}/tmp").split() == []
        return
    mine = {vm["name"]: vm for vm in current}.get(VM)
    assert (mine["status"] if mine else "gone") in expected_status(verb, step), current
    if mine is not None and mine["status"] == "error":
        assert "volantd stopped while" in mine["status_reason"], mine
    if mine is not None:
        assert volantd.api("DELETE", f"/api/v1/vms/{VM}").status == 204
    assert orphans(volantd, vms(volantd)) == []
    assert vms(volantd) == []


def check_build_left_nothing(vb: VolantBox, *, installed: bool) -> None:
    """After a kill inside a build: no worker unit, no work directory, no build record; the
    plugin only when the kill came after its install."""
    units = vb.sh("systemctl list-units --all --plain --no-legend 'volant-build-*'").strip()
    assert units == "", units
    assert vb.sh("ls -A /var/lib/volant/builds 2>/dev/null || true").split() == []
    script = vb.box.root / "srv/volant-test/build_records.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "import sqlite3\n"
        "db = sqlite3.connect('/var/lib/volant/state.db')\n"
        "print(db.execute(\"SELECT count(*) FROM host_resources WHERE kind LIKE 'build%'\")"
        ".fetchone()[0])\n"
    )
    assert vb.sh("python3 /srv/volant-test/build_records.py").strip() == "0"
    status = vb.api("GET", f"/api/v1/plugins/{BUILT}").status
    assert status == (200 if installed else 404)
    if installed:
        assert vb.api("DELETE", f"/api/v1/plugins/{BUILT}").status == 204


def check_volume_after(vb: VolantBox, verb: str, step: str) -> None:
    """A create killed before its row is recorded leaves no file (repair removed it); a
    delete killed after its row went leaves none either; a resize killed half-way is finished
    by the next resize. Then the volume goes, and nothing of it stays behind."""
    reply = vb.api("GET", f"{VOLUMES}/{VOLUME}")
    exists = {"volume-create": step == "recorded", "volume-delete": False}.get(verb, True)
    assert reply.status == (200 if exists else 404), reply
    path = f"/var/lib/volant/volumes/{VOLUME}.img"
    assert vb.run("test", "-e", path).returncode == (0 if exists else 1)
    if verb == "volume-resize":
        grown = vb.api("POST", f"{VOLUMES}/{VOLUME}/resize", {"size": "64M"})
        assert (grown.status, grown.body["size_bytes"]) == (200, 64 << 20), grown
        blocks = vb.sh(f"dumpe2fs -h {path} 2>/dev/null | sed -n 's/^Block count: *//p'")
        size = vb.sh(f"dumpe2fs -h {path} 2>/dev/null | sed -n 's/^Block size: *//p'")
        assert int(blocks) * int(size) == 64 << 20
    if exists:
        assert vb.api("DELETE", f"{VOLUMES}/{VOLUME}").status == 204
    assert vb.sh("ls -A /var/lib/volant/volumes").split() == []
    assert orphans(vb, vms(vb)) == []


def test_every_boundary_is_walked() -> None:
    walked = {f"{verb}:{step}" for verb, step in POINTS}
    assert len(walked) == sum(len(steps) for steps in STEPS.values())
    assert {"create", "start", "stop", "restart", "delete"} <= STEPS.keys()
    assert {"volume-create", "volume-resize", "volume-delete"} <= STEPS.keys()


def ghost_scope(vb: VolantBox, name: str) -> int:
    """A scope of VM name's unit name in volant.slice, holding a sleep; its pid."""
    vb.box.spawn(
        ["systemd-run", "--scope", f"--unit=volant-vm-{name}", "--slice=volant.slice", "sleep",
         "600"]
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while vb.run("systemctl", "is-active", f"volant-vm-{name}.scope").returncode != 0:
        assert time.monotonic() < deadline, f"scope of {name} did not start"
        time.sleep(0.1)
    return vb.scope_pids(f"volant-vm-{name}.scope")[0]


def repairs(vb: VolantBox) -> list[dict[str, Any]]:
    return list(vb.api("GET", "/api/v1/events?type=HOST_REPAIRED&limit=10000").body["events"])


def test_start_removes_what_no_vm_owns(volantd: VolantBox) -> None:
    """Orphans with no record at all (a scope, a tap, a machine, files) and a VM in error
    whose scope still runs: the next start scans the host and removes each, with an event."""
    assert volantd.api("POST", "/api/v1/vms", {"name": "e", "plugin": "demo"}).status == 201
    seen = {e["id"] for e in repairs(volantd)}
    volantd.sh("systemctl stop volantd")
    volantd.sh(
        "python3 -c \"import sqlite3; c = sqlite3.connect('/var/lib/volant/state.db');"
        " c.execute(\\\"UPDATE vms SET status = 'error', pid = NULL WHERE name = 'e'\\\");"
        ' c.commit()"'
    )
    leader = ghost_scope(volantd, "ghost")
    volantd.sh(
        "busctl call org.freedesktop.machine1 /org/freedesktop/machine1"
        f" org.freedesktop.machine1.Manager RegisterMachine sayssus ghost 0 volant vm {leader} /"
    )
    volantd.sh(
        "ip tuntap add dev vt-deadbeef00 mode tap && ip link set vt-deadbeef00 alias ghost"
        " && mkdir -p /run/volant/vms/ghost && touch /var/lib/volant/consoles/ghost.log"
        " && mkdir -p /var/lib/volant/disks && truncate -s 1M /var/lib/volant/disks/ghost.img"
        " /var/lib/volant/disks/.e.img.partial"
    )
    volantd.sh("systemctl start volantd")
    volantd.wait_healthy()

    current = vms(volantd)
    assert [(vm["name"], vm["status"]) for vm in current] == [("e", "error")]
    assert orphans(volantd, current) == []
    events = [e for e in repairs(volantd) if e["id"] not in seen]
    removed = {
        (e["payload"]["kind"], e["vm"]) for e in events if e["payload"]["action"] == "removed"
    }
    assert {
        ("scope", "ghost"),
        ("machine", "ghost"),
        ("tap", "ghost"),
        ("run_dir", "ghost"),
        ("console_log", "ghost"),
        ("disk", "ghost"),
        ("disk", "e"),  # a partial disk of a VM that exists: a make cut short
        ("scope", "e"),
        ("tap", "e"),
        ("machine", "e"),
    } <= removed, events
    assert "repair: removed scope ghost" in volantd.journal(lines=200)

    # A scope appearing under a VM that is not running: delete ends it by its unit name.
    ghost_scope(volantd, "e")
    assert volantd.api("DELETE", "/api/v1/vms/e").status == 204
    assert volantd.run("systemctl", "is-active", "volant-vm-e.scope").returncode != 0
    assert orphans(volantd, vms(volantd)) == []
