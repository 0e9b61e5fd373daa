"""The README's operator commands, run as written, in order, on a fresh namespaced systemd:
install (apt and volar setup), quick start, troubleshooting, clean-up.

Each tagged block comes from README.md through tests/readme.py; a command that fails fails the
test with its output. As in tests/system/test_deb.py, the .deb is dist/'s and apt resolves
offline.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from scripts.sysbox import Sysbox
from tests.readme import blocks
from tests.system.test_deb import package

pytestmark = pytest.mark.system


class Operator:
    """Runs README lines as root in the box, in the directory holding the .deb."""

    def __init__(self, box: Sysbox, cwd: str) -> None:
        self.box = box
        self.cwd = cwd
        self.said: dict[str, str] = {}

    def run(self, line: str) -> str:
        proc = self.box.run(
            ["/bin/bash", "-o", "pipefail", "-c", line],
            check=False,
            timeout=300,
            cwd=self.cwd,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        assert proc.returncode == 0, f"README command {line!r} failed ({proc.returncode}):\n" + (
            proc.stdout + proc.stderr
        )
        self.said[line] = proc.stdout
        return proc.stdout

    def block(self, name: str) -> None:
        for line in blocks(name):
            self.run(line)

    def json(self, line: str) -> Any:
        return json.loads(self.run(line))


@pytest.fixture(scope="module")
def operator(sysbox: Sysbox) -> Operator:
    deb = package()
    # A container image's policy-rc.d forbids starting services; hosts have none.
    sysbox.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    return Operator(sysbox, str(deb.parent))


def test_install(operator: Operator) -> None:
    operator.block("install")
    assert operator.said["systemctl is-active volantd"].strip() == "active"
    plan = operator.said[blocks("install")[1]]
    assert "create   bridge" in plan or "keep     bridge" in plan
    assert "table inet volant" in operator.run("nft list tables")


def test_quick_start(operator: Operator) -> None:
    operator.block("quickstart")
    said = operator.said
    assert "web" in said["volar vms create web --plugin hello"]
    assert "running" in said["volar vms create web --plugin hello"]
    assert "hello from volant" in said["volar vms action web greet"]
    assert "app.py" in said["volar vms exec web -- ls -l /opt/volant/plugins/hello"]
    assert "def " in operator.run("cat app.py")  # vms cp put the workload's file here
    assert "GET:/greet" in said["volar vms operations web"]
    assert "hello from volant" in said["volar vms call web GET:/greet"]
    vms = operator.json("volar vms list --json")
    assert [(vm["name"], vm["status"]) for vm in vms] == [("web", "running")]


def test_troubleshooting(operator: Operator) -> None:
    operator.block("troubleshooting")
    said = operator.said
    assert "active (running)" in said["systemctl status volantd --no-pager"]
    assert "volantd: configuration OK" in said["volantd --check-config"]
    assert "net.ipv4.ip_forward = 1" in said["sysctl net.ipv4.ip_forward"]
    assert "/com/volantvm/Volant1/vm/web" in said["busctl tree com.volantvm.Volant1"]
    # The VM ran on across the restart the accel fix asked for.
    vm = operator.json(shlex.join(["volar", "vms", "get", "web", "--json"]))
    assert vm["status"] == "running"


def test_cleanup(operator: Operator) -> None:
    operator.block("cleanup")
    assert operator.json("volar vms list --json") == []
