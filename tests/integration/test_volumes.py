"""Volumes with a real volantd (process supervisor) and real QEMU guests (started paused: the
host side is what is tested here; the guest mounting them is the agent's part).

Over volar and REST: create, list, get, resize (grow only), delete; attach at VM create; a
second running VM on a volume is refused with 409, and so is a delete while a VM has it; the
file is sparse, formatted ext4 on first use, and a resize grows its file system.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    ROOT,
    Daemon,
    build_guest,
    netns,
    raw,
    running_daemon,
    start_daemon,
    stop_daemon,
)
from tests.readme import blocks

pytestmark = pytest.mark.integration

M = 1024 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    settings = {"runtime.start_paused": True, "runtime.stop_timeout": 1.0}
    with running_daemon(tmp_path_factory.mktemp("volantd"), settings) as d:
        yield d


def volume_file(daemon: Daemon, name: str) -> Path:
    return daemon.tmp / "state" / "volumes" / f"{name}.img"


def dumpe2fs(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dumpe2fs", "-h", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def fs_bytes(path: Path) -> int:
    info = dumpe2fs(path)
    return int(info["Block count"]) * int(info["Block size"])


def volar_json(daemon: Daemon, *argv: str) -> Any:
    proc = daemon.volar(*argv, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def qemu_argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_volumes_over_volar(daemon: Daemon) -> None:
    created = volar_json(daemon, "volumes", "create", "data", "--size", "64M")
    assert (created["name"], created["size_bytes"], created["formatted"]) == ("data", 64 * M, False)
    path = volume_file(daemon, "data")
    st = path.stat()
    assert (st.st_size, st.st_blocks) == (64 * M, 0)  # sparse: nothing written yet
    assert (st.st_mode & 0o777) == 0o600

    table = daemon.volar("volumes", "list")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "SIZE", "USED", "FORMATTED"]
    assert row.split()[:4] == ["data", "64M", "0", "no"]
    assert [v["name"] for v in volar_json(daemon, "volumes", "list")] == ["data"]
    shown = daemon.volar("volumes", "get", "data")
    assert "size_bytes:" in shown.stdout
    assert "attachments: -" in shown.stdout

    again = daemon.volar("volumes", "create", "data", "--size", "64M")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    small = daemon.volar("volumes", "create", "tiny", "--size", "1M")
    assert small.returncode == 2
    assert "between 16M and 8T" in small.stderr
    reserved = daemon.volar("volumes", "create", "volant-x", "--size", "64M")
    assert reserved.returncode == 1
    assert "reserved" in reserved.stderr

    grown = volar_json(daemon, "volumes", "resize", "data", "--size", "96M")
    assert grown["size_bytes"] == 96 * M
    assert path.stat().st_size == 96 * M
    shrink = daemon.volar("volumes", "resize", "data", "--size", "32M")
    assert shrink.returncode == 1
    assert "only grow" in shrink.stderr

    deleted = daemon.volar("volumes", "delete", "data")
    assert deleted.returncode == 0
    assert deleted.stdout.strip() == "volume data deleted"
    assert not path.exists()
    gone = daemon.volar("volumes", "get", "data")
    assert gone.returncode == 1
    assert "no volume named 'data'" in gone.stderr


def test_rest_validation(daemon: Daemon) -> None:
    for body, field in (
        ({"name": "Bad", "size": "1G"}, "name"),
        ({"name": "a" * 21, "size": "1G"}, "name"),
        ({"name": "ok", "size": "1.5G"}, "size"),
        ({"name": "ok", "size": 1}, "size"),
        ({"name": "ok"}, "size"),
    ):
        status, ctype, problem = raw(daemon, "POST", "/api/v1/volumes", body)
        assert (status, ctype, problem["field"]) == (400, "application/problem+json", field)
    assert raw(daemon, "GET", "/api/v1/volumes/nope", None)[0] == 404
    assert raw(daemon, "GET", "/api/v1/volumes", None)[2] == {"volumes": [], "total": 0}


def create_vm(daemon: Daemon, name: str, *volumes: dict[str, Any]) -> tuple[int, Any]:
    body = {"name": name, "plugin": "demo", "volumes": list(volumes)}
    status, _ctype, reply = raw(daemon, "POST", "/api/v1/vms", body)
    return status, reply


def test_attach_at_create_one_running_vm_at_a_time(daemon: Daemon) -> None:
    status, volume = raw(daemon, "POST", "/api/v1/volumes", {"name": "pg", "size": "64M"})[::2]
    assert status == 201, volume
    path = volume_file(daemon, "pg")

    # volar's --volume, and the VM's own view of it
    made = daemon.volar("vms", "create", "a", "--plugin", "demo", "--volume", "pg:/var/lib/pg",
                        "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    vm = json.loads(made.stdout)
    assert vm["status"] == "running"
    shown = daemon.call(lambda c: c.get_vm("a"))
    assert shown["volumes"] == [{"name": "pg", "path": "/var/lib/pg", "read_only": False}]
    assert "volumes:" in daemon.volar("vms", "get", "a").stdout

    # formatted ext4 at its first use, still sparse
    assert dumpe2fs(path)["Filesystem volume name"] == "pg"
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(path)],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert blkid.stdout.strip() == "ext4"
    assert 0 < path.stat().st_blocks * 512 < 16 * M
    got = daemon.call(lambda c: c.get_volume("pg"))
    assert (got["formatted"], got["in_use_by"]) == (True, "a")
    assert got["attachments"] == [
        {"vm": "a", "path": "/var/lib/pg", "read_only": False, "vm_status": "running"}
    ]

    # the hypervisor has the file as a virtio-blk disk whose serial is the volume's name
    argv = qemu_argv(vm["pid"])
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert any(d.startswith(f"file={path},") and "readonly" not in d for d in drives), drives
    assert any(d.startswith("virtio-blk-") and d.endswith(",serial=pg") for d in devices), devices

    # a second VM on it while a runs: 409, and nothing of b is left
    status, problem = create_vm(daemon, "b", {"name": "pg", "path": "/data", "read_only": True})
    assert (status, problem["code"]) == (409, "Conflict"), problem
    assert "in use by VM 'a'" in problem["detail"]
    assert [v["name"] for v in daemon.call(lambda c: c.list_vms())] == ["a"]

    # no resize while a runs; a delete is refused while a VM has it, running or not
    status, problem = raw(daemon, "POST", "/api/v1/volumes/pg/resize", {"size": "128M"})[::2]
    assert (status, problem["code"]) == (409, "InvalidState"), problem
    daemon.call(lambda c: c.stop_vm("a"))
    status, problem = raw(daemon, "DELETE", "/api/v1/volumes/pg")[::2]
    assert (status, problem["code"]) == (409, "Conflict")
    assert "VM(s) a" in problem["detail"]

    # stopped: the volume grows, file system and all
    before = fs_bytes(path)
    assert before == 64 * M
    grown = daemon.call(lambda c: c.resize_volume("pg", "128M"))
    assert grown["size_bytes"] == 128 * M
    assert fs_bytes(path) == 128 * M

    # b may run with it now, and then a may not start
    status, vm_b = create_vm(daemon, "b", {"name": "pg", "path": "/data", "read_only": True})
    assert status == 201, vm_b
    argv = qemu_argv(vm_b["pid"])
    assert any(d.startswith(f"file={path},") and "readonly=on" in d for d in argv)
    status, problem = raw(daemon, "POST", "/api/v1/vms/a/start")[::2]
    assert (status, problem["code"]) == (409, "Conflict"), problem
    assert daemon.call(lambda c: c.get_vm("a"))["status"] == "error"

    # the volume outlives its VMs; then it can go
    for name in ("a", "b"):
        daemon.call(lambda c, name=name: c.delete_vm(name))
    assert daemon.call(lambda c: c.get_volume("pg"))["attachments"] == []
    assert path.exists()
    assert raw(daemon, "DELETE", "/api/v1/volumes/pg")[0] == 204
    assert not path.exists()
    assert not [r for r in os.listdir(path.parent)]


def test_a_volume_attached_twice_is_refused(daemon: Daemon) -> None:
    assert raw(daemon, "POST", "/api/v1/volumes", {"name": "twice", "size": "32M"})[0] == 201
    status, problem = create_vm(
        daemon, "t", {"name": "twice", "path": "/a"}, {"name": "twice", "path": "/b"}
    )
    assert (status, problem["field"]) == (400, "volumes"), problem
    assert "attached twice" in problem["detail"]
    proc = daemon.volar("vms", "create", "t", "--plugin", "demo",
                        "--volume", "twice:/a", "--volume", "twice:/b")  # fmt: skip
    assert proc.returncode == 1
    assert "attached twice" in proc.stderr
    for bad, words in (("twice:relative", "absolute"), ("twice:/", "cannot be mounted"),
                       ("twice:/a/../b", "'..'"), ("nope:/a", None)):  # fmt: skip
        proc = daemon.volar("vms", "create", "t", "--plugin", "demo", "--volume", bad)
        assert proc.returncode != 0, bad
        if words:
            assert words in proc.stderr, proc.stderr
    status, problem = create_vm(daemon, "t", {"name": "nope", "path": "/a"})
    assert (status, problem["code"], problem["field"]) == (404, "NotFound", "volumes")
    assert daemon.call(lambda c: c.list_vms()) == []
    assert raw(daemon, "DELETE", "/api/v1/volumes/twice")[0] == 204


def test_the_documented_commands(daemon: Daemon) -> None:
    """docs/volumes.md's command block, run as it is (the test plugin stands in for hello)."""
    daemon.install_plugin("hello")
    text = (ROOT / "docs" / "volumes.md").read_text()
    for line in blocks("volumes", text):
        argv = shlex.split(line)
        assert argv[0] == "volar", line
        proc = daemon.volar(*argv[1:])
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
    assert daemon.call(lambda c: c.list_volumes()) == []
    assert daemon.call(lambda c: c.list_vms()) == []


def test_start_repairs_volume_files(tmp_path: Path) -> None:
    """A file in volumes/ that no volume names is removed at start (HOST_REPAIRED); a volume
    whose file is gone is kept, shown missing, and a VM cannot start with it."""
    settings = {"runtime.start_paused": True, "runtime.stop_timeout": 1.0}
    with netns() as ns:
        daemon = start_daemon(ns, tmp_path, settings)
        try:
            daemon.call(lambda c: c.create_volume("kept", "32M"))
            daemon.call(lambda c: c.create_volume("lost", "32M"))
            daemon.call(lambda c: c.create_vm({"name": "v", "plugin": "demo",
                        "volumes": [{"name": "lost", "path": "/data"}]}))  # fmt: skip
            daemon.call(lambda c: c.stop_vm("v"))
            stop_daemon(daemon, delete_vms=False)
            orphan = volume_file(daemon, "orphan")
            orphan.write_bytes(b"left by a killed create")
            volume_file(daemon, "lost").unlink()

            daemon = start_daemon(ns, tmp_path, settings)
            assert not orphan.exists()
            assert volume_file(daemon, "kept").exists()
            events = daemon.call(lambda c: c.list_events(types=["HOST_REPAIRED"]))
            assert [(e["payload"]["kind"], e["payload"]["name"], e["payload"]["action"])
                    for e in events] == [("volume", str(orphan), "removed")]  # fmt: skip
            assert "volume lost: its file" in daemon.log_text()
            lost = daemon.call(lambda c: c.get_volume("lost"))
            assert (lost["missing"], lost["allocated_bytes"]) == (True, None)
            status, problem = raw(daemon, "POST", "/api/v1/vms/v/start")[::2]
            assert (status, problem["code"]) == (409, "InvalidState"), problem
            assert "the file of volume 'lost' is missing" in problem["detail"]
            daemon.call(lambda c: c.delete_vm("v"))
            assert raw(daemon, "DELETE", "/api/v1/volumes/lost")[0] == 204
            assert raw(daemon, "DELETE", "/api/v1/volumes/kept")[0] == 204
        finally:
            stop_daemon(daemon)
