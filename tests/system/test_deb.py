"""The Debian package under a real systemd: apt installs dist/volant_<version>_amd64.deb in a
sysbox, the packaged volantd.service boots the packaged example plugin on the packaged guest,
D-Bus answers as polkit says, and remove and purge clean up what they should.

apt resolves offline: every dependency is installed on the host already (`make apt`), and the
sandbox has no network. Nothing from this checkout runs inside except the .deb itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scripts.sysbox import Sysbox

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = "/usr/share/volant/examples"
SERVICE = "com.volantvm.Volant1"
MANAGER = "/com/volantvm/Volant1"


def package() -> Path:
    """dist/volant_<version>_amd64.deb, built with `make deb` when it is not there."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    deb = ROOT / "dist" / f"volant_{version}_amd64.deb"
    if not deb.exists():
        subprocess.run(["make", "deb"], cwd=ROOT, check=True)
    return deb


def sh(box: Sysbox, script: str, timeout: float = 120) -> str:
    proc = box.run(["/bin/sh", "-c", script], check=False, timeout=timeout)
    assert proc.returncode == 0, (
        f"{script!r} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )
    return proc.stdout


def volar(box: Sysbox, *argv: str) -> Any:
    """`volar ARGV --json` (on PATH from the package) as root; its JSON answer."""
    return json.loads(sh(box, shlex.join(["volar", *argv, "--json"]), timeout=200))


def failed_units(box: Sysbox) -> str:
    return sh(box, "systemctl list-units --failed --plain --no-legend --full")


@pytest.fixture(scope="module")
def installed(sysbox: Sysbox) -> Sysbox:
    deb = package()
    # Images made for containers carry a policy-rc.d that forbids starting services; a host
    # has none. Removed from the sandbox's overlay only.
    sh(sysbox, "rm -f /usr/sbin/policy-rc.d")
    # A missing dependency fails at once: the sandbox's network namespace has no route out.
    proc = sysbox.run(
        ["apt-get", "install", "-y", str(deb)],
        check=False,
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sysbox


def test_installed_service_group_config(installed: Sysbox) -> None:
    box = installed
    assert sh(box, "systemctl is-active volantd").strip() == "active"
    assert sh(box, "systemctl is-enabled volantd").strip() == "enabled"
    assert sh(box, "getent group volant").startswith("volant:")
    assert failed_units(box) == ""

    conffiles = sh(box, "dpkg-query -W -f='${Conffiles}' volant")
    assert "/etc/volant/volantd.yaml " in conffiles
    assert sh(box, "cat /etc/volant/volantd.yaml") == sh(box, "volantd --print-defaults")
    assert sh(box, "ls -A /etc/volant/trusted-keys.d") == ""
    # The unit starts /usr/bin/volantd, a link into the bundled virtualenv, compiled at install.
    assert sh(box, "readlink -f /usr/bin/volantd").strip() == "/usr/lib/volant/venv/bin/volantd"
    assert sh(box, "find /usr/lib/volant/venv -name '*.pyc' | head -n 1")
    # The guest agent lives in the guest image, never in the host's virtualenv.
    assert sh(box, "find /usr/lib/volant/venv -name 'volant_agent*'") == ""
    assert sh(box, "find /usr/lib/volant/venv -name '*.pyc' ! -perm -o+r | head -n 1") == ""
    # TCP callers need the key the install made: volantd's copy is root's, volar's the group's.
    modes = sh(box, "stat -c '%a %U:%G %n' /etc/volant/volantd.yaml.d/40-api-key.yaml "
                    "/etc/volant/volar.yaml")  # fmt: skip
    assert modes.splitlines() == [
        "600 root:root /etc/volant/volantd.yaml.d/40-api-key.yaml",
        "640 root:volant /etc/volant/volar.yaml",
    ]
    key = sh(box, "sed -n 's/^api_key: //p' /etc/volant/volar.yaml").strip()
    assert len(key) >= 40
    url = "http://127.0.0.1:7777/api/v1/system/info"
    assert sh(box, f"curl -s -o /dev/null -w '%{{http_code}}' {url}") == "401"
    info = json.loads(sh(box, f"curl -sf -H 'X-Volant-API-Key: {key}' {url}"))
    assert info["version"] == "0.1.0"
    # volar finds the key in /etc/volant/volar.yaml when it goes over TCP.
    proc = box.run(["volar", "--api", "http://127.0.0.1:7777", "system", "info", "--json"])
    assert json.loads(proc.stdout)["version"] == "0.1.0"


def test_man_pages_and_completions(installed: Sysbox) -> None:
    box = installed
    files = sh(box, "dpkg-query -L volant").split()
    for path in (
        "/usr/share/man/man1/volar.1.gz",
        "/usr/share/man/man1/volar-vms-create.1.gz",
        "/usr/share/man/man8/volantd.8.gz",
        "/usr/share/zsh/vendor-completions/_volar",
        "/usr/share/fish/vendor_completions.d/volar.fish",
    ):
        assert path in files
    assert r"\-\-print\-defaults" in sh(box, "zcat /usr/share/man/man8/volantd.8.gz")
    # bash asks volar itself (click's protocol) for the words that may follow.
    complete = (
        ". /usr/share/bash-completion/completions/volar; COMP_WORDS=(volar vms cr); "
        'COMP_CWORD=2; _volar_completion volar; echo "${COMPREPLY[@]}"'
    )
    assert sh(box, f"bash -c {shlex.quote(complete)}").split() == ["create"]


def test_example_plugin_boots_on_the_packaged_guest(installed: Sysbox) -> None:
    box = installed
    sh(box, f"cp {EXAMPLES}/keys/volant-examples.pub /etc/volant/trusted-keys.d/")
    plugin = volar(box, "plugins", "install", f"{EXAMPLES}/plugins/hello/manifest.json")
    assert (plugin["name"], plugin["signer"]) == ("hello", "volant-examples")

    volar(box, "vms", "create", "web", "--plugin", "hello")
    deadline = time.monotonic() + 150
    while (vm := volar(box, "vms", "get", "web"))["status"] != "running":
        assert vm["status"] == "starting", vm
        assert time.monotonic() < deadline, vm
        time.sleep(1)
    # No working KVM here: `runtime.accel: auto` means TCG, with the packaged kernel and image.
    argv = sh(box, f"cat /proc/{vm['pid']}/cmdline").split("\0")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-kernel") + 1] == "/usr/lib/volant/guest/vmlinuz"
    # The initrd is the packaged agent image with the plugin's own initramfs appended.
    agent = "/usr/lib/volant/guest/initramfs.img"
    sh(box, f"cmp -n $(stat -c %s {agent}) {agent} {argv[argv.index('-initrd') + 1]}")
    assert sh(box, "systemctl is-active volant-vm-web.scope").strip() == "active"

    greet = json.loads(sh(box, "volar vms action web greet"))  # the workload's own JSON
    assert greet["greeting"] == "hello from volant"
    # The agent answers only with the VM's secret, which its config disk carries.
    status = f"http://{vm['ip_address']}:8080/v1/status"
    assert '"unauthorized"' in sh(box, f"curl -sS --max-time 10 {status}")
    disk = "/run/volant/vms/web/config.img"
    assert sh(box, f"stat -c %a {disk}").strip() == "600"
    read = (
        "import json, sys; d = open(sys.argv[1], 'rb').read(); "
        "print(json.loads(d[44 : 44 + int.from_bytes(d[8:12], 'big')])['agent_secret'])"
    )
    secret = sh(box, f"python3 -c {shlex.quote(read)} {disk}").strip()
    answer = sh(box, f"curl -sS --max-time 10 -H 'X-Volant-Agent-Secret: {secret}' {status}")
    assert "hello" in answer


def test_dbus_reads_open_changes_denied_to_others(installed: Sysbox) -> None:
    box = installed
    listed = sh(box, f"busctl --system call {SERVICE} {MANAGER} {SERVICE}.Manager ListVMs")
    assert listed.startswith("aa{sv} 1 ")
    sh(box, "id -u alice >/dev/null 2>&1 || useradd -M alice")
    stop = shlex.join(["dbus-send", "--system", "--print-reply", f"--dest={SERVICE}", MANAGER,
                       f"{SERVICE}.Manager.StopVM", "string:web"])  # fmt: skip
    proc = box.run(
        ["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "/bin/sh", "-c", stop],
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"Error {SERVICE}.Error.PermissionDenied"), proc.stderr
    assert volar(box, "vms", "get", "web")["status"] == "running"


def test_reinstall_restarts_volantd_and_the_vm_runs_on(installed: Sysbox) -> None:
    """What an upgrade does: postinst restarts volantd.service (volant.slice is left alone),
    and the new daemon adopts the running VM."""
    box = installed
    vm = volar(box, "vms", "get", "web")
    daemon = sh(box, "systemctl show -P MainPID volantd").strip()
    keys = sh(box, "cat /etc/volant/volar.yaml /etc/volant/volantd.yaml.d/40-api-key.yaml")
    proc = box.run(
        ["apt-get", "install", "--reinstall", "-y", str(package())],
        check=False,
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sh(box, "systemctl show -P MainPID volantd").strip() not in ("0", daemon)
    again = volar(box, "vms", "get", "web")
    assert (again["status"], again["pid"]) == ("running", vm["pid"])
    assert "adopted VM web" in sh(box, "journalctl -u volantd --no-pager -n 50")
    assert sh(box, "cat /etc/volant/volar.yaml /etc/volant/volantd.yaml.d/40-api-key.yaml") == keys
    assert failed_units(box) == ""


# The guest's agent is polled this often during an upgrade; any failed request fails the test.
POLL = (
    "while [ ! -e /tmp/poll-stop ]; do "
    'curl -sf --max-time 3 -o /dev/null "http://$1:8080/healthz" || echo FAIL; '
    "echo ROUND; sleep 0.2; done; echo DONE"
)


def repacked(box: Sysbox, deb: Path, suffix: str) -> tuple[str, str]:
    """deb rebuilt with suffix appended to its version: the same files and maintainer scripts
    under a higher version, so that installing it is a real upgrade (prerm upgrade, preinst
    upgrade, postinst configure <old>). Returns (its path in the box, its version)."""
    old = sh(box, f"dpkg-deb -f {deb} Version").strip()
    new = old + suffix
    sh(box, f"rm -rf /root/repack && dpkg-deb -R {deb} /root/repack")
    sh(box, f"sed -i 's/^Version: .*/Version: {new}/' /root/repack/DEBIAN/control")
    path = f"/root/volant_{new}_amd64.deb"
    sh(box, f"dpkg-deb -Zgzip -z1 -b /root/repack {path} >/dev/null && rm -rf /root/repack")
    return path, new


def test_upgrade_keeps_the_vm_running_and_readopts_it(installed: Sysbox) -> None:
    """Two builds whose versions differ: the guest answers all through the upgrade, keeps its
    hypervisor, and the new volantd adopts it."""
    box = installed
    vm = volar(box, "vms", "get", "web")
    old = sh(box, "dpkg-query -W -f='${Version}' volant")
    daemon = sh(box, "systemctl show -P MainPID volantd").strip()
    path, new = repacked(box, package(), "+upgrade1")
    since = sh(box, "date +%s").strip()
    poller = box.spawn(["/bin/sh", "-c", POLL, "poll", vm["ip_address"]])
    try:
        time.sleep(2)
        proc = box.run(
            ["apt-get", "install", "-y", path],
            check=False,
            timeout=300,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(2)
    finally:
        sh(box, "touch /tmp/poll-stop")
        output, _ = poller.communicate(timeout=60)
    sh(box, "rm -f /tmp/poll-stop")
    lines = output.split()
    assert "DONE" in lines
    assert lines.count("ROUND") >= 10, output
    assert "FAIL" not in lines, output

    # dpkg took the upgrade path, and postinst restarted volantd (only volantd).
    assert f" upgrade volant:amd64 {old} {new}" in sh(box, "cat /var/log/dpkg.log")
    assert sh(box, "dpkg-query -W -f='${Version}' volant") == new
    assert sh(box, "systemctl show -P MainPID volantd").strip() not in ("0", daemon)
    again = volar(box, "vms", "get", "web")
    assert (again["status"], again["pid"]) == ("running", vm["pid"])
    assert sh(box, "systemctl is-active volant-vm-web.scope").strip() == "active"
    journal = sh(box, f"journalctl -u volantd --no-pager --since @{since}")
    assert f"adopted VM web (pid {vm['pid']}" in journal
    assert sh(box, "systemctl show -P NRestarts volantd").strip() == "0"
    assert failed_units(box) == ""


def test_a_damaged_state_db_stops_volantd_with_the_way_out_in_the_journal(
    installed: Sysbox,
) -> None:
    box = installed
    db = "/var/lib/volant/state.db"
    vm = volar(box, "vms", "get", "web")
    sh(box, "systemctl stop volantd")  # the VM runs on in its scope
    sh(box, f"cp -p {db} /root/state.db.good")
    pages = int(sh(box, f"stat -c %s {db}").strip()) // 4096
    # Three pages in the middle overwritten, as a torn write or a bad disk would leave them.
    garbage = "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 48)'"
    sh(box, f"{garbage} | dd of={db} bs=4096 seek={pages // 2} conv=notrunc 2>&1")
    since = sh(box, "date +%s").strip()
    assert box.run(["systemctl", "start", "volantd"], check=False).returncode != 0
    time.sleep(4)  # beyond RestartSec=2s: no restart follows exit status 65
    shown = sh(box, "systemctl show -p ActiveState,ExecMainStatus,NRestarts volantd")
    assert dict(line.split("=", 1) for line in shown.split()) == {
        "ActiveState": "failed",
        "ExecMainStatus": "65",
        "NRestarts": "0",
    }
    journal = sh(box, f"journalctl -u volantd --no-pager -o cat --since @{since}")
    assert f"volantd failed: the state database {db} is corrupt (SQLite's quick_check: " in journal
    assert (
        "hint: stop volantd and move state.db, state.db-wal and state.db-shm in "
        "/var/lib/volant aside" in journal
    )
    assert sh(box, "systemctl is-active volant-vm-web.scope").strip() == "active"

    # The way out: the good copy back in place.
    sh(box, f"rm -f {db}-wal {db}-shm && cp -p /root/state.db.good {db}")
    sh(box, "systemctl reset-failed volantd && systemctl start volantd")
    again = volar(box, "vms", "get", "web")
    assert (again["status"], again["pid"]) == ("running", vm["pid"])
    assert failed_units(box) == ""


def test_remove_keeps_state_and_purge_deletes_it(installed: Sysbox) -> None:
    box = installed
    qemu = volar(box, "vms", "get", "web")["pid"]
    daemon = sh(box, "systemctl show -P MainPID volantd").strip()
    assert int(daemon) > 0
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    proc = box.run(["apt-get", "remove", "-y", "volant"], check=False, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sh(box, "systemctl is-active volantd || true").strip() in ("inactive", "unknown")
    # The VMs' scopes went with the service: no hypervisor runs on without its manager.
    for pid in (daemon, qemu):
        assert sh(box, f"test -e /proc/{pid} || echo gone").strip() == "gone"
    assert failed_units(box) == ""
    assert "state.db" in sh(box, "ls /var/lib/volant")
    assert sh(box, "test -f /etc/volant/volantd.yaml && echo kept").strip() == "kept"
    assert sh(box, "test -e /usr/bin/volantd || echo gone").strip() == "gone"

    proc = box.run(["apt-get", "purge", "-y", "volant"], check=False, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = ("/var/lib/volant", "/var/log/volant", "/etc/volant", "/usr/lib/volant")
    gone = sh(box, f"for p in {' '.join(paths)}; do test -e $p || echo $p; done")
    assert tuple(gone.split()) == paths
    assert sh(box, "dpkg-query -W -f='${db:Status-Status}' volant 2>&1 || true") != "installed"
    assert failed_units(box) == ""
