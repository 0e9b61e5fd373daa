"""Print boot-to-workload-healthy of one workload as a rootfs plugin against the same workload as
an initramfs plugin, and the host disk each extra VM of a rootfs plugin takes.

Usage: .venv/bin/python -m bench.rootfs_boot [--runs 3] [--machine auto]

The workload is tests/integration/rootfs_images.py's: busybox sh writes a few files, then busybox
httpd serves them; its health check is a GET of one of them. As an initramfs plugin it runs from
a small cpio appended to the agent image (as root: the agent image knows no other user); as a
rootfs plugin from the 18 MB erofs image, chrooted as its user app, with its writes on a fresh
sparse 10 GiB ext4 disk (made by volantd's own code, timed apart) or on a tmpfs (ephemeral).
Each boot is launched from a LaunchSpec in its own network namespace, the config disk carrying
the manifest, the secret and the storage, as volantd writes it; the runs are interleaved.
After each rootfs boot with a disk the guest is powered off gracefully and the disk's allocated
blocks are what that VM costs the host beyond the shared image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.agent_boot import SECRET, _curl, _until
from bench.qemu_boot import guest_in_netns
from scripts.guest.cpio import Tree, cpio_newc
from tests.integration.rootfs_images import rootfs_image, rootfs_manifest
from volant.model import ROOTFS_SERIAL, UPPER_SERIAL, Disk, GuestRoot
from volant.storage import DiskFiles

DISK_BYTES = 10 << 30
HEALTHY = b'"workload": "healthy"'


def manifests() -> tuple[dict[str, Any], dict[str, Any]]:
    """(rootfs plugin manifest, the same workload as an initramfs plugin's)."""
    rootfs = rootfs_manifest(rootfs_image(), "app")
    initramfs = dict(rootfs)
    initramfs["workload"] = {k: v for k, v in rootfs["workload"].items() if k != "user"}
    del initramfs["rootfs"]
    return rootfs, initramfs


Boot = tuple[float, dict[str, float]]


async def _healthy(ns: str, start: float) -> Boot:
    """Seconds from launch to healthy, and the agent's timeline (guest seconds since boot)."""
    seconds = await _until(ns, "/healthz", HEALTHY, start)
    status = json.loads(await _curl(ns, "/v1/status") or b"{}")
    timeline = {k: v for k, v in status.get("timeline", {}).items() if v is not None}
    return seconds, timeline


async def initramfs_boot(machine: str, manifest: dict[str, Any], cpio: Path) -> Boot:
    async with guest_in_netns(
        machine, image="agent-initramfs.img", appended=[cpio], plugin="app",
        agent_secret=SECRET, disk_manifest=manifest,
    ) as (ns, _spec, start):  # fmt: skip
        return await _healthy(ns, start)


async def rootfs_boot(machine: str, manifest: dict[str, Any], upper: Path | None) -> Boot:
    disks = [Disk(rootfs_image(), ROOTFS_SERIAL)]
    if upper is not None:
        disks.append(Disk(upper, UPPER_SERIAL, read_only=False))
    root = GuestRoot("erofs", upper=UPPER_SERIAL if upper is not None else "")
    async with guest_in_netns(
        machine, image="agent-initramfs.img", plugin="app", agent_secret=SECRET,
        disks=disks, root=root, disk_manifest=manifest, graceful_stop=True,
    ) as (ns, _spec, start):  # fmt: skip
        return await _healthy(ns, start)


def show(label: str, values: list[float], unit: str = "s") -> None:
    shown = " ".join(f"{v:.2f}" for v in values)
    print(f"{label:44} median {statistics.median(values):.2f}{unit}, min {min(values):.2f}{unit}"
          f"  runs: {shown}", flush=True)  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--machine", default="auto")
    args = parser.parse_args()
    rootfs, initramfs = manifests()
    files = DiskFiles()
    boots: dict[str, list[Boot]] = {"initramfs": [], "rootfs, own disk": [], "ephemeral": []}
    mkfs: list[float] = []
    used: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vt-bench-") as tmp:
        work = Path(tmp)
        tree = Tree()
        tree.dir("home/app")
        cpio = work / "app.cpio"
        cpio.write_bytes(cpio_newc(tree.entries.values()))
        for run in range(args.runs):
            boots["initramfs"].append(await initramfs_boot(args.machine, initramfs, cpio))
            upper = work / f"vm{run}.img"
            began = time.monotonic()
            await files.make(upper, DISK_BYTES, f"vm{run}")
            mkfs.append(time.monotonic() - began)
            boots["rootfs, own disk"].append(await rootfs_boot(args.machine, rootfs, upper))
            used.append(upper.stat().st_blocks * 512 / 1e6)
            boots["ephemeral"].append(await rootfs_boot(args.machine, rootfs, None))
    times = {label: [b[0] for b in runs] for label, runs in boots.items()}
    for label, values in times.items():
        show(f"{label}, launch to workload healthy", values)
    for label, runs in boots.items():
        for key in ("agent_listening", "root_ready", "workload_healthy"):
            values = [b[1][key] for b in runs if key in b[1]]
            if values:
                show(f"  {label}: in guest, {key}", values)
    base = statistics.median(times["initramfs"])
    own, ephemeral = (statistics.median(times[k]) / base for k in ("rootfs, own disk", "ephemeral"))
    print(f"ratio rootfs/initramfs (medians): {own:.2f}, ephemeral/initramfs: {ephemeral:.2f}")
    show("mkfs.ext4 of a 10 GiB sparse disk", mkfs)
    show("host disk per extra VM (allocated)", used, " MB")
    print(f"shared rootfs image (not copied per VM): {rootfs_image().stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    asyncio.run(main())
