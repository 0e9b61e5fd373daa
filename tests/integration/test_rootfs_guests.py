"""Rootfs plugins on real QEMU guests (TCG) running the agent image, under a real volantd.

One rootfs (tests/integration/rootfs_images.py: busybox and a user app, erofs) serves every VM.
Covers: the workload runs chrooted in the rootfs as the image's non-root user; what it writes
survives stop and start and a volantd restart, and its disk goes with the VM; an ephemeral VM
forgets; two VMs attach the one cached rootfs (no copy) and each disk holds only its own writes;
a volume (volantd's) mounted read-write and read-only in the root; a truncated rootfs or a
wrong format is refused at install and leaves nothing behind; a rootfs
the guest cannot mount, or an image without the manifest's user, ends the VM in error with the
reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    GUEST_DIR,
    Daemon,
    build_guest,
    netns,
    raw,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.rootfs_images import (
    BALLAST_MIB,
    rootfs_image,
    rootfs_manifest,
    write_rootfs_plugin,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, taps and QEMU need root"),
]

DISK_MB = 256
MIB = 1 << 20


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("volantd")


@pytest.fixture(scope="module")
def daemon(state: Path) -> Iterator[Daemon]:
    build_guest()
    with netns() as ns:
        d = start_daemon(ns, state, _settings(state), plugins=())
        install(d, "app")
        try:
            yield d
        finally:
            stop_daemon(d)


def _settings(state: Path) -> dict[str, Any]:
    return {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "runtime.boot_timeout": 90,
        "vm.disk_size_mb": DISK_MB,
    }


def install(daemon: Daemon, name: str, image: Path | None = None, **changes: Any) -> Any:
    path = write_rootfs_plugin(daemon.tmp / "plugins", name, image or rootfs_image(), **changes)
    body = {"manifest": path.read_text(), "origin": path.as_uri()}
    status, _, reply = raw(daemon, "POST", "/api/v1/plugins", body)
    assert status == 201, reply
    return reply


def create(daemon: Daemon, name: str, plugin: str = "app", **extra: Any) -> dict[str, Any]:
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": name, "plugin": plugin, **extra})
    assert status == 201, vm
    return wait_status(daemon, name, "running", timeout=120)


def page(daemon: Daemon, vm: dict[str, Any], name: str) -> str:
    return daemon.http_get(f"http://{vm['ip_address']}:8081/{name}", timeout=60)


def get(daemon: Daemon, name: str) -> dict[str, Any]:
    status, _, vm = raw(daemon, "GET", f"/api/v1/vms/{name}")
    assert status == 200, vm
    return dict(vm)


def disk_of(daemon: Daemon, name: str) -> Path:
    return daemon.tmp / "state" / "disks" / f"{name}.img"


def cmdline_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_the_workload_runs_chrooted_as_the_images_user(daemon: Daemon) -> None:
    vm = create(daemon, "keep")
    assert page(daemon, vm, "uid.txt") == "1000\n"
    assert page(daemon, vm, "groups.txt").split() == ["1000", "50"]
    # The rootfs' own root (with the mount points the agent made), not the agent image's.
    listing = set(page(daemon, vm, "root.txt").split())
    assert {"bin", "etc", "home", "srv", "proc", "dev", "tmp"} <= listing
    assert not {"usr", "init"} & listing
    assert page(daemon, vm, "hostname.txt") == "keep\n"
    assert page(daemon, vm, "boots.txt") == "boot\n"
    assert vm["ephemeral"] is False

    usage = get(daemon, "keep")["usage"]
    assert usage["disk_size_bytes"] == DISK_MB * MIB
    assert 0 < usage["disk_bytes"] < 16 * MIB
    assert disk_of(daemon, "keep").stat().st_blocks * 512 == usage["disk_bytes"]
    system = daemon.call(lambda c: c.request("GET", "/api/v1/system/status"))
    assert system["usage"]["disk_bytes"] >= usage["disk_bytes"]


def test_its_writes_survive_stop_start_and_a_volantd_restart(daemon: Daemon, state: Path) -> None:
    vm = get(daemon, "keep")
    assert daemon.call(lambda c: c.stop_vm("keep"))["status"] == "stopped"
    assert disk_of(daemon, "keep").exists()
    daemon.call(lambda c: c.start_vm("keep"))
    vm = wait_status(daemon, "keep", "running", timeout=120)
    assert page(daemon, vm, "boots.txt") == "boot\nboot\n"

    daemon.call(lambda c: c.stop_vm("keep"))
    stop_daemon(daemon, delete_vms=False)
    again = start_daemon(daemon.ns, state, _settings(state), plugins=())
    daemon.proc = again.proc
    assert disk_of(daemon, "keep").exists()  # the start-up repair kept the VM's disk
    daemon.call(lambda c: c.start_vm("keep"))
    vm = wait_status(daemon, "keep", "running", timeout=120)
    assert page(daemon, vm, "boots.txt") == "boot\nboot\nboot\n"

    daemon.call(lambda c: c.delete_vm("keep"))
    assert not disk_of(daemon, "keep").exists()
    assert not list((daemon.tmp / "state" / "disks").iterdir())


def test_an_ephemeral_vm_forgets_its_writes(daemon: Daemon) -> None:
    vm = create(daemon, "tmp", ephemeral=True)
    assert vm["ephemeral"] is True
    assert page(daemon, vm, "uid.txt") == "1000\n"
    assert not disk_of(daemon, "tmp").exists()
    assert get(daemon, "tmp")["usage"]["disk_bytes"] is None
    daemon.call(lambda c: c.stop_vm("tmp"))
    daemon.call(lambda c: c.start_vm("tmp"))
    vm = wait_status(daemon, "tmp", "running", timeout=120)
    assert page(daemon, vm, "boots.txt") == "boot\n"
    daemon.call(lambda c: c.delete_vm("tmp"))


def test_two_vms_share_the_rootfs_and_keep_only_their_own_writes(daemon: Daemon) -> None:
    one, two = create(daemon, "one"), create(daemon, "two")
    rootfs_args = []
    for vm in (one, two):
        argv = cmdline_of(get(daemon, vm["name"])["pid"])
        drives = [a for a in argv if a.startswith("file=") and "readonly=on" in a]
        rootfs_args += [d for d in drives if "config.img" not in d]
    assert len(rootfs_args) == 2, rootfs_args
    assert rootfs_args[0] == rootfs_args[1], rootfs_args
    cached = Path(rootfs_args[0].split(",")[0].removeprefix("file="))
    assert cached.is_relative_to(daemon.tmp / "state" / "artifacts")
    assert cached.stat().st_size > BALLAST_MIB * MIB
    for vm in (one, two):
        assert page(daemon, vm, "boots.txt") == "boot\n"
        used = get(daemon, vm["name"])["usage"]["disk_bytes"]
        assert used < BALLAST_MIB * MIB, f"{vm['name']}'s disk holds {used} bytes"
    for name in ("one", "two"):
        daemon.call(lambda c, n=name: c.delete_vm(n))


def test_a_truncated_rootfs_or_a_wrong_format_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    image = rootfs_image()
    short = tmp_path / "short.erofs"
    short.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    # Its checksum is the truncated file's own: only the size check can tell.
    status, _, problem = _install(daemon, "short", short)
    assert (status, problem["code"]) == (400, "InvalidArgument"), problem
    assert "truncated" in problem["detail"]
    status, _, problem = _install(daemon, "squashy", image, rootfs_format="squashfs")
    assert (status, problem["code"]) == (400, "InvalidArgument"), problem
    assert "not a squashfs image" in problem["detail"]
    status, _, problem = _install(daemon, "xfs", image, rootfs_format="xfs")
    assert status == 400, problem
    assert "format" in json.dumps(problem), problem
    plugins = daemon.call(lambda c: c.request("GET", "/api/v1/plugins"))["plugins"]
    assert {p["name"] for p in plugins} == {"app"}
    # The refused rootfs is not kept in the artifact cache either.
    cached = {
        p.stat().st_size for p in (daemon.tmp / "state" / "artifacts").rglob("*") if p.is_file()
    }
    assert short.stat().st_size not in cached


def _install(daemon: Daemon, name: str, image: Path, rootfs_format: str = "erofs") -> Any:
    path = write_rootfs_plugin(daemon.tmp / "plugins" / name, name, image)
    doc = json.loads(path.read_text())
    doc["rootfs"]["format"] = rootfs_format
    body = {"manifest": json.dumps(doc), "origin": path.as_uri()}
    return raw(daemon, "POST", "/api/v1/plugins", body)


def test_a_user_missing_from_the_image_ends_the_vm_in_error(daemon: Daemon) -> None:
    """The agent reports it (workload "failed" with the reason) and the health gate ends the
    VM in error at once, not after runtime.boot_timeout."""
    workload = rootfs_manifest(rootfs_image(), "nouser")["workload"] | {"user": "ghost"}
    install(daemon, "nouser", workload=workload)
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": "ghost", "plugin": "nouser"})
    assert status == 201, vm
    vm = wait_status(daemon, "ghost", "error", timeout=120)
    assert "workload.user 'ghost' is not in the image's /etc/passwd" in vm["status_reason"]
    daemon.call(lambda c: c.delete_vm("ghost"))
    assert not disk_of(daemon, "ghost").exists()


def test_a_rootfs_the_guest_cannot_mount_ends_the_vm_in_error(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Corruption inside a well-formed image (here the superblock's root inode, which breaks
    its checksum) passes the host's magic and size check; the guest's mount refuses it."""
    corrupt = tmp_path / "corrupt.erofs"
    data = bytearray(rootfs_image().read_bytes())
    data[1024 + 14 : 1024 + 16] = (60000).to_bytes(2, "little")
    corrupt.write_bytes(bytes(data))
    install(daemon, "corrupt", corrupt)
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": "bad", "plugin": "corrupt"})
    assert status == 201, vm
    vm = wait_status(daemon, "bad", "error", timeout=120)
    assert "cannot mount the rootfs (erofs)" in vm["status_reason"], vm
    daemon.call(lambda c: c.delete_vm("bad"))
    assert not disk_of(daemon, "bad").exists()


def test_a_volume_is_mounted_in_the_rootfs_read_write_or_read_only(daemon: Daemon) -> None:
    """volantd's volumes (host side) and the agent's mounts (guest side) together, with the
    workload as root (the volume's root directory is root's): read-write at /data, then the
    same volume read-only at /ro in another VM, which sees what the first wrote."""
    workload = rootfs_manifest(rootfs_image(), "asroot")["workload"] | {"user": "root"}
    install(daemon, "asroot", workload=workload)
    status, _, volume = raw(daemon, "POST", "/api/v1/volumes", {"name": "data", "size": "64M"})
    assert status == 201, volume
    vm = create(daemon, "vol1", "asroot", volumes=[{"name": "data", "path": "/data"}])
    assert page(daemon, vm, "uid.txt") == "0\n"
    assert "lost+found" in page(daemon, vm, "data.txt").split()
    assert page(daemon, vm, "data-mode.txt") == "rw\n"
    # Stopped first: a delete kills the guest, and an ext4 whose journal needs recovery
    # cannot be mounted from a read-only disk (the agent says so, and the VM is in error).
    daemon.call(lambda c: c.stop_vm("vol1"))
    daemon.call(lambda c: c.delete_vm("vol1"))
    mount = {"name": "data", "path": "/ro", "read_only": True}
    vm = create(daemon, "vol2", "asroot", volumes=[mount])
    assert "probe" in page(daemon, vm, "ro.txt").split()  # written by vol1
    assert page(daemon, vm, "ro-mode.txt") == "ro\n"
    daemon.call(lambda c: c.delete_vm("vol2"))
    assert raw(daemon, "DELETE", "/api/v1/volumes/data")[0] == 204
