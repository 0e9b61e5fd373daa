"""The agent mounts disks found by serial into a rootfs workload's root (LaunchSpec.mounts: the
contract volumes use), on a real QEMU guest (TCG) launched straight from a LaunchSpec.

Two ext4 disks made here with mkfs.ext4 (their roots owned by the image's user app): one at
/data read-write, one at /ro read-only (attached read-only too). The workload, chrooted as app,
lists both and tries to write in each; after a graceful power-off the read-write disk holds its
file, owned by uid 1000, and is clean (e2fsck -n): the agent unmounted it before PID 1 powered
off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench.qemu_boot import BRIDGE_IP, GUEST_IP, TAP, setup_netns
from tests.integration.daemon import GUEST_DIR, build_guest
from tests.integration.rootfs_images import rootfs_image, rootfs_manifest
from volant.model import ROOTFS_SERIAL, Disk, GuestMount, GuestRoot, LaunchSpec
from volant.runtime.cmdline import build_cmdline
from volant.runtime.configdisk import storage_document, write_config_disk
from volant.runtime.qemu import QemuDriver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, taps and QEMU need root"),
]

SECRET = "guest-mounts-test-secret"


def ext4(path: Path, files: dict[str, str]) -> Path:
    content = path.with_suffix(".d")
    content.mkdir()
    for name, text in files.items():
        (content / name).write_text(text)
    subprocess.run(["truncate", "-s", "32M", str(path)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=1000:1000", "-d", str(content), str(path)],
        check=True,
    )
    return path


async def curl(ns: str, url: str, timeout: float = 120) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "curl", "-sf", "-m", "2", url,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return out.decode()
        await asyncio.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


async def boot_with_mounts(work: Path, data: Path, ro: Path) -> tuple[dict[str, str], str]:
    """The workload's pages (data.txt, data-mode.txt, ro.txt, ro-mode.txt, uid.txt) and the
    console log, after a graceful power-off."""
    driver = QemuDriver(machine="microvm")
    cmdline = build_cmdline(
        name="mounts", runtime="app", plugin="app", ip=GUEST_IP, gateway=BRIDGE_IP,
        netmask="24", hypervisor_extras=driver.kernel_extras(), manifest=None,
    )  # fmt: skip
    spec = LaunchSpec(
        name="mounts", cpus=1, memory_mb=256, kernel=GUEST_DIR / "vmlinuz",
        initramfs=GUEST_DIR / "agent-initramfs.img", cmdline=cmdline, mac="02:56:c0:a8:7f:02",
        run_dir=work, console_log=work / "console.log", tap=TAP,
        disks=(
            Disk(rootfs_image(), ROOTFS_SERIAL), Disk(data, "vol-data", read_only=False),
            Disk(ro, "vol-ro", read_only=True),
        ),
        mounts=(GuestMount("vol-data", "/data"), GuestMount("vol-ro", "/ro", read_only=True)),
        root=GuestRoot("erofs"),  # ephemeral: a tmpfs upper layer
    )  # fmt: skip
    manifest = rootfs_manifest(rootfs_image(), "app")
    disk = write_config_disk(work / "config.img", manifest, SECRET, storage_document(spec))
    spec = dataclasses.replace(spec, config_disk=disk)
    ns = setup_netns()
    hv = driver.for_vm(spec)
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", ns, *hv.command())
    try:
        await hv.wait_ready(60)
        pages = {}
        for name in ("uid.txt", "data.txt", "data-mode.txt", "ro.txt", "ro-mode.txt"):
            pages[name] = await curl(ns, f"http://{GUEST_IP}:8081/{name}")
        await hv.shutdown(graceful=True, timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await (await asyncio.create_subprocess_exec("ip", "netns", "del", ns)).wait()
    return pages, (work / "console.log").read_text(errors="replace")


def test_disks_are_mounted_by_serial_inside_the_root(tmp_path: Path) -> None:
    build_guest()
    data = ext4(tmp_path / "data.img", {"hello.txt": "from the host\n"})
    ro = ext4(tmp_path / "ro.img", {"readme.txt": "read only\n"})
    work = Path(tempfile.mkdtemp(prefix="vt-", dir="/tmp"))  # short: QEMU's socket paths
    try:
        pages, console = asyncio.run(boot_with_mounts(work, data, ro))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert pages["uid.txt"] == "1000\n", console[-3000:]
    assert "hello.txt" in pages["data.txt"].split()
    assert pages["data-mode.txt"] == "rw\n"
    assert "readme.txt" in pages["ro.txt"].split()
    assert pages["ro-mode.txt"] == "ro\n"
    probe = subprocess.run(
        ["debugfs", "-R", "stat /probe", str(data)], capture_output=True, text=True, check=True
    ).stdout
    assert "User:  1000" in probe, probe
    clean = subprocess.run(
        ["e2fsck", "-fn", str(data)], capture_output=True, text=True, check=False
    )
    assert clean.returncode == 0, clean.stdout + json.dumps(console[-2000:])
