"""The D-Bus API on a real system bus, authorised by the real polkitd, inside a sysbox.

The polkit policy and rules and the bus policy from this checkout are installed into the
sandbox's overlay; volantd.service runs as in production. Three callers: root, "alice" (no
special groups) and "bob" (group volant).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import ROOT, VolantBox
from tests.integration.daemon import GUEST_DIR, build_guest

pytestmark = pytest.mark.system

SERVICE = "com.volantvm.Volant1"
MANAGER = "/com/volantvm/Volant1"
IFACE = f"{SERVICE}.Manager"
SOCKET = "/run/volant/volantd.sock"


def install_policies(box: Sysbox) -> None:
    root = box.root
    files = {
        "polkit/com.volantvm.volant1.policy": "usr/share/polkit-1/actions",
        "polkit/50-volant.rules": "etc/polkit-1/rules.d",
        "packaging/dbus/com.volantvm.Volant1.conf": "usr/share/dbus-1/system.d",
    }
    for source, target in files.items():
        directory = root / target
        directory.mkdir(parents=True, exist_ok=True)
        (directory / source.rsplit("/", 1)[1]).write_text((ROOT / source).read_text())


@pytest.fixture(scope="module")
def volantd(sysbox: Sysbox) -> Iterator[VolantBox]:
    if not (GUEST_DIR / "vmlinuz").exists() or not (GUEST_DIR / "initramfs.img").exists():
        build_guest()
    vb = VolantBox(sysbox)
    install_policies(sysbox)
    vb.sh(
        "busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig"
        " && (systemctl try-restart polkit || true)"
        " && groupadd -f volant && useradd -M alice && useradd -M -G volant bob"
    )
    vb.install()
    yield vb
    vb.run("systemctl", "stop", "volantd")


def as_user(user: str, command: str) -> str:
    """`command` run by `user` with its groups (root when user is "root")."""
    if user == "root":
        return command
    return f"setpriv --reuid={user} --regid={user} --init-groups {command}"


def call(vb: VolantBox, user: str, method: str, *args: str, timeout: float = 180) -> Any:
    argv = ["busctl", "--system", f"--timeout={int(timeout)}", "call", SERVICE, MANAGER, IFACE,
            method, *args]  # fmt: skip
    return vb.run("/bin/sh", "-c", as_user(user, shlex.join(argv)), timeout=timeout + 10)


def error_name(vb: VolantBox, user: str, method: str, *args: str) -> str:
    """The D-Bus error name a call fails with, as dbus-send prints it ("" on success)."""
    argv = ["dbus-send", "--system", "--print-reply", f"--dest={SERVICE}", MANAGER,
            f"{IFACE}.{method}", *args]  # fmt: skip
    proc = vb.run("/bin/sh", "-c", as_user(user, shlex.join(argv)))
    if proc.returncode == 0:
        return ""
    return str(proc.stderr).split(":", 1)[0].removeprefix("Error ").strip()


def create_spec(name: str) -> list[str]:
    return ["a{sv}", "2", "name", "s", name, "plugin", "s", "demo"]


def test_tree_and_reads_are_open_to_everyone(volantd: VolantBox) -> None:
    tree = volantd.sh(f"busctl --system tree --list {SERVICE}").split()
    assert MANAGER in tree
    proc = call(volantd, "alice", "ListVMs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "aa{sv} 0"
    status = call(volantd, "alice", "GetSystemStatus")
    assert '"supervisor" s "systemd"' in status.stdout


def test_polkit_decides_who_may_create(volantd: VolantBox) -> None:
    proc = call(volantd, "root", "CreateVM", *create_spec("rootvm"))
    assert proc.returncode == 0, proc.stderr + volantd.journal()
    assert proc.stdout.strip() == f'o "{MANAGER}/vm/rootvm"'

    # dbus-send prints the error name (busctl only its message); it cannot build a{sv}.
    denied = error_name(volantd, "alice", "StopVM", "string:rootvm")
    assert denied == "com.volantvm.Volant1.Error.PermissionDenied"
    refused = call(volantd, "alice", "CreateVM", *create_spec("alicevm"))
    assert refused.returncode != 0
    assert "not authorised for com.volantvm.volant1.manage-vms" in refused.stderr
    assert "alicevm" not in volantd.sh(f"busctl --system tree --list {SERVICE}")

    # bob is no root: only polkitd's rules (group volant), not the uid fallback, let him in.
    proc = call(volantd, "bob", "CreateVM", *create_spec("bobvm"))
    assert proc.returncode == 0, proc.stderr + volantd.journal()
    tree = volantd.sh(f"busctl --system tree --list {SERVICE}").split()
    assert {f"{MANAGER}/vm/rootvm", f"{MANAGER}/vm/bobvm"} <= set(tree)
    assert call(volantd, "bob", "DestroyVM", "s", "bobvm").returncode == 0


def test_vm_object_properties_and_properties_changed(volantd: VolantBox) -> None:
    path = f"{MANAGER}/vm/rootvm"
    text = volantd.sh(f"busctl --system introspect {SERVICE} {path} {SERVICE}.VM")
    props = {
        line.split()[0]: line.split()[3:] for line in text.splitlines() if " property " in line
    }
    assert props[".Status"][0] == '"running"'
    assert props[".Name"][0] == '"rootvm"'
    assert props[".Unit"][0] == '"volant-vm-rootvm.scope"'
    assert int(props[".PID"][0]) > 0
    assert set(props) >= {".IPAddress", ".MAC", ".CPUs", ".MemoryMB", ".Plugin"}
    # Usage as systemd reports it for the scope: CPU time, and memory unset (not accounted here).
    get = f"busctl --system get-property {SERVICE} {path} {SERVICE}.VM CPUUsageNSec MemoryCurrent"
    deadline = time.monotonic() + 15
    while True:
        cpu, memory = (int(line.split()[1]) for line in volantd.sh(get).splitlines())
        if cpu > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert cpu > 0
    assert memory == 2**64 - 1

    match = f"type='signal',path='{path}',member='PropertiesChanged'"
    script = (
        f'busctl --system --json=short monitor --match "{match}" > /tmp/changes.json & '
        "sleep 1; "
        f"busctl --system --timeout=120 call {SERVICE} {path} {SERVICE}.VM Stop; "
        "sleep 1; kill $!; cat /tmp/changes.json"
    )
    out = volantd.sh(script, timeout=180)
    statuses = [
        change["payload"]["data"][1]["Status"]["data"]
        for change in map(json.loads, out.splitlines())
        if "Status" in change["payload"]["data"][1]
    ]
    assert statuses == ["stopped"]
    assert volantd.vm("rootvm")["status"] == "stopped"


def test_rest_socket_applies_the_same_decision(volantd: VolantBox) -> None:
    def post(user: str, path: str) -> str:
        curl = (
            f"curl -s -o /dev/null -w %{{http_code}} -X POST --unix-socket {SOCKET} http://v{path}"
            " || true"  # a refused connection prints 000 and exits 7
        )
        return volantd.sh(as_user(user, curl), timeout=180).strip()

    # The socket is root's and group volant's (0660): alice cannot even connect.
    assert volantd.sh(f"stat -c %a:%U:%G {SOCKET}").strip() == "660:root:volant"
    assert post("alice", "/api/v1/vms/rootvm/start") == "000"
    bob_get = as_user("bob", f"curl -s --unix-socket {SOCKET} http://v/api/v1/vms/rootvm")
    assert json.loads(volantd.sh(bob_get))["status"] == "stopped"
    assert post("root", "/api/v1/vms/rootvm/start") == "200"
    assert post("bob", "/api/v1/vms/rootvm/restart") == "200"
    assert volantd.vm("rootvm")["status"] == "running"
    assert error_name(volantd, "root", "DestroyVM", "string:rootvm") == ""


def test_a_restarted_daemon_exports_existing_vms(volantd: VolantBox) -> None:
    proc = call(volantd, "root", "CreateVM", *create_spec("keeper"))
    assert proc.returncode == 0, proc.stderr
    volantd.sh("systemctl restart volantd")
    volantd.wait_healthy()
    text = volantd.sh(f"busctl --system introspect {SERVICE} {MANAGER}/vm/keeper {SERVICE}.VM")
    assert '"running"' in text
    assert call(volantd, "root", "DestroyVM", "s", "keeper").returncode == 0


def test_a_call_activates_the_stopped_daemon(volantd: VolantBox) -> None:
    target = volantd.box.root / "usr/share/dbus-1/system-services"
    target.mkdir(parents=True, exist_ok=True)
    source = ROOT / "packaging/dbus/com.volantvm.Volant1.service"
    (target / source.name).write_text(source.read_text())
    volantd.sh(
        "systemctl stop volantd && busctl call org.freedesktop.DBus /org/freedesktop/DBus "
        "org.freedesktop.DBus ReloadConfig"
    )
    proc = call(volantd, "alice", "ListVMs", timeout=60)
    assert proc.returncode == 0, proc.stderr + volantd.journal()
    assert volantd.sh("systemctl is-active volantd").strip() == "active"
