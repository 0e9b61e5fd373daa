"""The operator's plugin path under a real systemd: volar installs the signed hello example on a
host that requires signatures, a VM boots its workload in a scope, and volar reaches it.

What `make demo` shows, as assertions. The finer cases (tampering, the health gate's error,
restarts, the config disk) are in tests/integration/test_plugin_guests.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from scripts.sysbox import Sysbox
from scripts.volantbox import GUEST, ROOT, VolantBox
from tests.integration.daemon import build_guest

pytestmark = pytest.mark.system

HELLO = ROOT / "examples" / "plugins" / "hello"


@pytest.fixture(scope="module")
def volantd(sysbox: Sysbox) -> Iterator[VolantBox]:
    build_guest()
    write_plugin_cpio(HELLO)
    vb = VolantBox(sysbox)
    vb.install(
        {
            "runtime.initramfs": str(GUEST / "agent-initramfs.img"),
            "plugins.require_signature": True,
            "plugins.trusted_keys_dir": str(ROOT / "examples" / "keys"),
        },
        plugins=(),
    )
    yield vb
    vb.run("systemctl", "stop", "volantd")


def ok(vb: VolantBox, *argv: str) -> str:
    proc = vb.volar(*argv)
    assert proc.returncode == 0, f"volar {' '.join(argv)}: {proc.stderr}"
    return str(proc.stdout)


def test_signed_example_installs_boots_and_answers(volantd: VolantBox) -> None:
    installed = json.loads(
        ok(volantd, "plugins", "install", str(HELLO / "manifest.json"), "--json")
    )
    assert (installed["name"], installed["signer"]) == ("hello", "volant-examples")
    assert "hello" in ok(volantd, "plugins", "list")
    tree = volantd.sh("busctl tree com.volantvm.Volant1")
    assert "/com/volantvm/Volant1/plugin/hello" in tree

    created = json.loads(ok(volantd, "vms", "create", "web", "--plugin", "hello", "--json"))
    assert created["status"] == "starting"
    volantd.wait_status("web", "running", timeout=180)
    assert volantd.scope_show("volant-vm-web.scope", "ActiveState")["ActiveState"] == "active"

    greet = json.loads(ok(volantd, "vms", "action", "web", "greet"))
    assert greet["greeting"] == "hello from volant"
    assert "GET /greet" in ok(volantd, "vms", "logs", "web")
    assert "/greet" in json.loads(ok(volantd, "vms", "openapi", "web"))["paths"]

    refused = volantd.volar("plugins", "remove", "hello")
    assert refused.returncode == 1
    assert "used by VM(s) web" in refused.stderr
    ok(volantd, "vms", "delete", "web")
    ok(volantd, "plugins", "remove", "hello")
    assert "hello" not in ok(volantd, "plugins", "list")
