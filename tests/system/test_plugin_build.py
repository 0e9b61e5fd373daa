"""Plugin builds under a real systemd: the worker is a transient service systemd starts with
only what a build needs, outside volantd.service's cgroup and sandbox, and a cancel ends it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import VolantBox
from tests.integration.oci_images import image_layout

pytestmark = pytest.mark.system

HUNG = 5057  # a port inside the box that accepts and never answers: a hung registry


@pytest.fixture(scope="module")
def vb(sysbox: Sysbox) -> Iterator[VolantBox]:
    box = VolantBox(sysbox)
    box.install({}, plugins=())
    sysbox.spawn(
        ["python3", "-c",
         "import socket\n"
         f"s = socket.create_server(('127.0.0.1', {HUNG}))\n"
         "conns = []\n"
         "while True: conns.append(s.accept())\n"],
    )  # fmt: skip
    yield box
    box.run("systemctl", "stop", "volantd")


def wait_build(vb: VolantBox, build_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        build: dict[str, Any] = vb.api("GET", f"/api/v1/builds/{build_id}").body
        if build["state"] != "running" or time.monotonic() > deadline:
            return build
        time.sleep(0.2)


def test_a_build_runs_in_its_own_sandboxed_unit_and_cancel_ends_it(vb: VolantBox) -> None:
    reply = vb.api("POST", "/api/v1/plugins/build", {"image": f"docker://127.0.0.1:{HUNG}/x/y:1"})
    assert reply.status == 202, reply
    unit = f"volant-build-{reply.body['id']}.service"
    deadline = time.monotonic() + 30
    while vb.run("systemctl", "is-active", unit).returncode != 0:
        assert time.monotonic() < deadline, vb.journal()
        time.sleep(0.1)
    shown = vb.scope_show(
        unit,
        "CapabilityBoundingSet",
        "NoNewPrivileges",
        "ProtectSystem",
        "ReadWritePaths",
        "Slice",
        "DevicePolicy",
    )
    caps = set(shown["CapabilityBoundingSet"].split())
    assert caps == {
        "cap_chown",
        "cap_dac_override",
        "cap_dac_read_search",
        "cap_fowner",
        "cap_fsetid",
        "cap_mknod",
        "cap_setfcap",
    }
    assert shown["NoNewPrivileges"] == "yes"
    assert shown["ProtectSystem"] == "strict"
    assert shown["DevicePolicy"] == "closed"
    assert shown["Slice"] == "volant.slice"
    assert set(shown["ReadWritePaths"].split()) == {
        "/var/lib/volant/images",
        f"/var/lib/volant/builds/{reply.body['id']}",
    }
    worker = vb.scope_pids(unit)
    assert worker
    assert not set(worker) & set(vb.scope_pids("volantd.service"))

    cancelled = vb.api("DELETE", f"/api/v1/builds/{reply.body['id']}")
    assert cancelled.status == 200
    assert cancelled.body["state"] == "cancelled"
    assert vb.run("systemctl", "is-active", unit).returncode != 0
    assert vb.sh("ls -A /var/lib/volant/builds").split() == []


def test_a_build_under_systemd_installs_the_plugin(vb: VolantBox) -> None:
    body = {"image": f"oci:{image_layout()}:app", "name": "sysbuilt"}
    reply = vb.api("POST", "/api/v1/plugins/build", body)
    assert reply.status == 202, reply
    build = wait_build(vb, reply.body["id"])
    assert build["state"] == "succeeded", (build, vb.journal())
    manifest = vb.api("GET", "/api/v1/plugins/sysbuilt/manifest").body
    assert manifest["workload"]["user"] == "app"
    assert manifest["rootfs"]["path"].startswith("/var/lib/volant/images/rootfs/")
    unit = f"volant-build-{build['id']}.service"
    units = vb.sh(f"systemctl list-units --all --plain --no-legend '{unit}'").strip()
    assert units == ""
