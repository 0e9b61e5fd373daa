"""`volar setup` on a host under a real systemd: inside a sysbox, whose network namespace holds
the bridge, the nftables table and an "outside" namespace the guests reach through NAT.

The tests run in order on one box: plan, set up, set up again, repair drift, NAT for a guest,
refuse to undo under a VM, undo.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import VENV_BIN, VolantBox
from tests.integration.daemon import GUEST_DIR, ROOT, build_guest
from tests.readme import blocks
from volant.network import bridge_table_text
from volant.setup.nft import table_text

pytestmark = pytest.mark.system

SYSCTL = "/etc/sysctl.d/60-volant.conf"
RULES = "/etc/volant/nftables.conf"
DROPIN = "/etc/systemd/system/volantd.service.d/50-volant-nat.conf"
RECORD = "/var/lib/volant/setup.json"
# An "uplink" to a namespace of the box's own: what a guest reaches only through NAT.
OUTSIDE = (
    "ip netns add outside && ip link add up0 type veth peer name up1 netns outside"
    " && ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up"
    " && ip -n outside addr add 10.99.0.2/24 dev up1 && ip -n outside link set up1 up"
    " && ip -n outside link set lo up"
)


@pytest.fixture(scope="module")
def box(sysbox: Sysbox) -> Iterator[VolantBox]:
    if not (GUEST_DIR / "vmlinuz").exists() or not (GUEST_DIR / "initramfs.img").exists():
        build_guest()
    vb = VolantBox(sysbox)
    # Files only, and no tmpfiles run: setup makes the directories, the service and the rest.
    vb.install(start=False)
    vb.sh("rm -rf /var/lib/volant /var/log/volant /etc/volant/trusted-keys.d && useradd -M alice")
    yield vb
    vb.run("systemctl", "stop", "volantd")


def setup(vb: VolantBox, *args: str) -> tuple[int, str, str]:
    proc = vb.volar("setup", *args)
    return proc.returncode, proc.stdout, proc.stderr


def lines(out: str) -> dict[str, str]:
    """Report lines keyed by what they are about: {'bridge vbr0 …': 'created', …}."""
    found = {}
    for line in out.splitlines():
        if line.startswith("  "):
            verb, _, what = line.strip().partition(" ")
            found[what.strip()] = verb
    return found


def state(vb: VolantBox) -> dict[str, Any]:
    """What setup changes, as the host shows it."""
    return {
        "bridge": vb.run("ip", "-j", "addr", "show", "vbr0").stdout.strip(),
        "table": vb.run("nft", "list", "table", "inet", "volant").stdout,
        "bridge_table": vb.run("nft", "list", "table", "bridge", "volant").stdout,
        "forward": vb.sh("cat /proc/sys/net/ipv4/ip_forward").strip(),
        "enabled": vb.run("systemctl", "is-enabled", "volantd").stdout.strip(),
        "active": vb.run("systemctl", "is-active", "volantd").stdout.strip(),
        "files": vb.run("ls", SYSCTL, RULES, DROPIN, RECORD).stdout.split(),
    }


def test_dry_run_prints_the_plan_and_changes_nothing(box: VolantBox) -> None:
    before = state(box)
    code, out, err = setup(box, "--dry-run")
    assert code == 0, err
    assert out.startswith("Dry run: nothing was changed.")
    plan = lines(out)
    assert plan["bridge vbr0 192.168.127.1/24"] == "create"
    assert plan["systemctl enable --now volantd.service"] == "create"
    assert plan["sysctl net.ipv4.ip_forward=1 (/etc/sysctl.d/60-volant.conf)"] == "create"
    assert any(what.startswith("nftables tables inet and bridge volant") for what in plan)
    assert state(box) == before
    assert before["bridge"] == ""
    assert before["active"] == "inactive"


def test_setup_prepares_the_host(box: VolantBox) -> None:
    code, out, err = setup(box)
    assert code == 0, err
    made = lines(out)
    assert made.pop("directory /etc/volant (0755)") == "kept"  # it holds volantd.yaml already
    assert set(made.values()) == {"created"}, out
    now = state(box)
    (link,) = json.loads(now["bridge"])
    assert link["operstate"] in ("UP", "UNKNOWN") or "UP" in link["flags"]
    assert {"local": "192.168.127.1", "prefixlen": 24} in [
        {k: a[k] for k in ("local", "prefixlen")} for a in link["addr_info"]
    ]
    assert now["table"] == table_text("vbr0", IPv4Network("192.168.127.0/24"), 7777)
    assert now["bridge_table"] == bridge_table_text()
    assert now["forward"] == "1"
    assert (now["enabled"], now["active"]) == ("enabled", "active")
    assert sorted(now["files"]) == sorted([SYSCTL, RULES, DROPIN, RECORD])
    assert box.sh("stat -c %a /var/lib/volant").strip() == "750"
    box.wait_healthy()


def test_setup_again_changes_nothing(box: VolantBox) -> None:
    code, out, err = setup(box, "--json")
    assert code == 0, err
    assert {change["action"] for change in json.loads(out)} == {"keep"}


def test_the_documented_firewall_commands(box: VolantBox) -> None:
    """docs/networking.md's firewall block, on the host setup just prepared."""
    out = {}
    for line in blocks("firewall", (ROOT / "docs" / "networking.md").read_text()):
        argv = shlex.split(line)
        if argv[0] == "volar":
            argv[0] = str(VENV_BIN / "volar")
        proc = box.run(*argv)
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
        out[line] = proc.stdout
    assert "Dry run: nothing was changed." in out["volar setup --dry-run"]
    assert "masquerade" in out["nft list table inet volant"]
    assert out["nft list table bridge volant"] == bridge_table_text()


def test_setup_repairs_drift_and_volantd_restores_the_table(box: VolantBox) -> None:
    box.sh("nft delete table inet volant")
    code, out, _ = setup(box)
    assert code == 0
    assert [what for what, verb in lines(out).items() if verb == "created"] == [
        "nftables tables inet and bridge volant: masquerade 192.168.127.0/24, forward vbr0, "
        f"API port 7777 closed to it, guests kept from each other's agents ({RULES})"
    ]
    box.sh("nft flush chain bridge volant forward")  # the bridge table drifts too
    code, out, _ = setup(box)
    assert "created" in lines(out).values()
    assert box.sh("nft list table bridge volant") == bridge_table_text()
    # The drop-in loads the tables whenever volantd starts: after a reboot, say.
    box.sh("nft delete table inet volant && nft delete table bridge volant")
    since = box.sh("date +%s").strip()
    box.sh("systemctl restart volantd")
    assert "masquerade" in box.sh("nft list table inet volant")
    assert box.sh("nft list table bridge volant") == bridge_table_text()
    box.wait_healthy()
    # With the tables in place, volantd does not warn about them at start.
    log = box.sh(f"journalctl -u volantd --since @{since} --no-pager -o cat")
    assert "ready" in log
    assert "table bridge volant" not in log


def test_a_guest_reaches_the_outside_through_nat(box: VolantBox) -> None:
    box.install_test_plugin("demo")
    box.sh(OUTSIDE)
    box.box.spawn(
        ["ip", "netns", "exec", "outside", "sh", "-c",
         "exec python3 -u -m http.server -b 10.99.0.2 8000 >/tmp/outside.log 2>&1"]
    )  # fmt: skip
    try:
        vm = box.api("POST", "/api/v1/vms", {"name": "nat", "plugin": "demo"}).body
        box.guest_answer(vm["ip_address"])
        proc = box.box.run(
            [str(VENV_BIN / "volar"), "vms", "console", "nat", "--linger", "5"],
            input="wget -qO- http://10.99.0.2:8000/ >/dev/null && echo NAT-$((40+2))\n",
            check=False,
            timeout=60,
        )
        assert "NAT-42" in proc.stdout, proc.stdout + proc.stderr
    finally:
        box.run("sh", "-c", "ip netns pids outside | xargs -r kill")
    # The outside saw the host's uplink address, not the guest's (it has no route to those).
    log = box.sh("cat /tmp/outside.log")
    assert "10.99.0.1 - - [" in log, log
    assert '"GET / HTTP/1.1" 200' in log, log


def test_a_published_port_is_reached_from_outside_and_from_the_host(box: VolantBox) -> None:
    """volantd.service after `volar setup`: the outside namespace (another machine, on a veth
    to the box) and the box itself reach a guest's port 8080 at the box's port 8088; setup sees
    no drift in volantd's chains; the rules go with the VM, and come back after a restart of
    volantd (whose ExecStartPre replaces the table)."""
    body = {"name": "pub", "plugin": "demo", "publish": ["8088:8080", "8089:9090"]}
    reply = box.api("POST", "/api/v1/vms", body)
    assert reply.status == 201, reply
    box.guest_answer(reply.body["ip_address"])
    outside = "ip netns exec outside curl -sS --max-time 5 http://10.99.0.1:8088/"
    assert "pub" in box.sh(outside)
    assert "pub" in box.sh("curl -sS --max-time 5 http://127.0.0.1:8088/")
    assert "pub" in box.sh("curl -sS --max-time 5 http://192.168.127.1:8088/")
    # The hairpin: another guest reaches it through the host's published port. Not port 8080,
    # which is the agent's, and `bridge volant` keeps guests off each other's agent port
    # (with br_netfilter, as here, the translated frame is bridged from tap to tap).
    console = [str(VENV_BIN / "volar"), "vms", "console"]
    box.box.run([*console, "pub", "--linger", "2"], input="httpd -p 9090 -h /www\n", timeout=60)
    proc = box.box.run(
        [*console, "nat", "--linger", "8"],
        # Short: a line longer than the console's 80 columns comes back garbled.
        input="wget -qO- 192.168.127.1:8089|grep -q pub&&echo HAIRPIN-$((40+2))\n",
        check=False,
        timeout=60,
    )
    assert "HAIRPIN-42" in proc.stdout, proc.stdout + proc.stderr
    code, out, err = setup(box, "--json")
    assert code == 0, err
    assert {change["action"] for change in json.loads(out)} == {"keep"}
    box.sh("systemctl restart volantd")
    box.wait_healthy()
    assert box.vm("pub")["status"] == "running"
    assert "pub" in box.sh(outside)
    assert box.api("POST", "/api/v1/vms/pub/stop").status == 200
    assert '"vm:pub"' not in box.sh("nft list table inet volant")
    assert box.run("sh", "-c", outside).returncode != 0
    assert box.api("DELETE", "/api/v1/vms/pub").status == 204


def test_undo_refuses_while_a_vm_is_on_the_bridge(box: VolantBox) -> None:
    code, _out, err = setup(box, "--undo")
    assert code == 1
    assert err.startswith("volar: error: VMs are still attached to bridge vbr0 (vt-")
    assert "hint: delete them first" in err
    assert "masquerade" in box.sh("nft list table inet volant")


def test_setup_needs_root(box: VolantBox) -> None:
    proc = box.run("runuser", "-u", "alice", "--", str(VENV_BIN / "volar"), "setup", "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr == (
        "volar: error: volar setup changes the host and must run as root\nhint: sudo volar setup\n"
    )


def test_undo_removes_what_setup_made(box: VolantBox) -> None:
    assert box.api("DELETE", "/api/v1/vms/nat").status == 204
    code, out, err = setup(box, "--undo", "--dry-run")
    assert code == 0, err
    assert "remove" in lines(out).values()
    assert state(box)["active"] == "active"
    assert box.run("systemctl", "is-active", "volant-dnsmasq.service").stdout.strip() == "active"

    code, out, err = setup(box, "--undo")
    assert code == 0, err
    now = state(box)
    assert now["bridge"] == ""
    assert now["table"] == now["bridge_table"] == ""
    assert now["forward"] == "0"
    assert (now["enabled"], now["active"]) == ("disabled", "inactive")
    assert box.run("systemctl", "is-active", "volant-dnsmasq.service").stdout.strip() != "active"
    assert now["files"] == []
    # The state directory holds volantd's database, so it stays; the empty ones go.
    assert "kept: not empty" in out
    assert box.run("test", "-d", "/etc/volant/trusted-keys.d").returncode == 1

    code, out, _ = setup(box, "--undo")
    assert code == 0
    assert set(lines(out).values()) == {"kept"}
