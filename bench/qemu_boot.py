"""Print boot-to-HTTP seconds of the test guest under QEMU, per machine type.

Usage: .venv/bin/python -m bench.qemu_boot [--runs 3] [--machines microvm,pc,q35] [--quiet]

Needs root and a built guest (scripts/build_guest.py). Each run gets its own network namespace
with a bridge and a tap; the host's root namespace is never touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from scripts.guest.plugin_image import concat_initramfs
from volant.model import Disk, GuestRoot, LaunchSpec
from volant.runtime.cmdline import build_cmdline
from volant.runtime.configdisk import storage_document, write_config_disk
from volant.runtime.qemu import QemuDriver

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / ".cache" / "guest"
GUEST_IP, BRIDGE_IP, TAP = "192.168.127.2", "192.168.127.1", "vt-bench0"
TIMEOUT = 90.0


def setup_netns() -> str:
    ns = f"volant-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    for cmd in (
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {BRIDGE_IP}/24 dev br0",
        "link set br0 up",
        f"tuntap add dev {TAP} mode tap",
        f"link set {TAP} master br0",
        f"link set {TAP} up",
    ):
        subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
    return ns


def _says_ready(log: Path) -> bool:
    try:
        return b"volant-init: ready" in log.read_bytes()
    except FileNotFoundError:
        return False


async def _wait_console(log: Path, start: float) -> float:
    while time.monotonic() - start < TIMEOUT:
        if await asyncio.to_thread(_says_ready, log):
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return float("nan")


async def _wait_http(ns: str, start: float) -> float:
    while time.monotonic() - start < TIMEOUT:
        curl = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "curl", "-s", "-m", "0.3",
            f"http://{GUEST_IP}:8080/", stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await curl.communicate()
        if out:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return float("nan")


@contextlib.asynccontextmanager
async def guest_in_netns(
    machine: str,
    *,
    image: str = "initramfs.img",
    appended: Sequence[Path] = (),
    plugin: str = "bench",
    manifest: str | None = None,
    extra: str = "",
    agent_secret: str | None = None,
    disks: Sequence[Disk] = (),
    root: GuestRoot | None = None,
    disk_manifest: dict[str, Any] | None = None,
    graceful_stop: bool = False,
) -> AsyncIterator[tuple[str, LaunchSpec, float]]:
    """Launch a guest in a fresh netns; yield (netns, spec, monotonic launch time); clean up.

    appended: archives (a plugin's cpio) booted after image, concatenated in the run dir.
    agent_secret: attach a config disk carrying it (and disk_manifest, and the storage of
    disks and root: a rootfs plugin), as volantd does for every VM.
    """
    driver = QemuDriver(machine=machine)
    run_dir = Path(tempfile.mkdtemp(prefix="vt-", dir="/tmp"))
    initramfs = GUEST / image
    if appended:
        initramfs = concat_initramfs(run_dir / "initramfs.img", [initramfs, *appended])
    ns = setup_netns()
    cmdline = build_cmdline(
        name="bench", runtime=plugin, plugin=plugin, ip=GUEST_IP, gateway=BRIDGE_IP,
        netmask="24", hypervisor_extras=driver.kernel_extras(), manifest=manifest, extra=extra,
    )  # fmt: skip
    spec = LaunchSpec(
        name="bench", cpus=1, memory_mb=256, kernel=GUEST / "vmlinuz", initramfs=initramfs,
        cmdline=cmdline, mac="02:56:c0:a8:7f:02", run_dir=run_dir,
        console_log=run_dir / "console.log", tap=TAP, disks=tuple(disks), root=root,
    )  # fmt: skip
    if agent_secret is not None:
        storage = storage_document(spec)
        disk = write_config_disk(run_dir / "config.img", disk_manifest, agent_secret, storage)
        spec = dataclasses.replace(spec, config_disk=disk)
    hv = driver.for_vm(spec)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", ns, *hv.command())
    try:
        yield ns, spec, start
    finally:
        await hv.shutdown(graceful=graceful_stop, timeout=30 if graceful_stop else 5)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await (await asyncio.create_subprocess_exec("ip", "netns", "del", ns)).wait()
        shutil.rmtree(run_dir, ignore_errors=True)


async def one_boot(machine: str, quiet: bool) -> tuple[float, float]:
    """(seconds to the init's ready line on the console, seconds to the first HTTP answer)."""
    async with guest_in_netns(machine, extra="quiet" if quiet else "") as (ns, spec, start):
        ready, answered = await asyncio.gather(
            _wait_console(spec.console_log, start), _wait_http(ns, start)
        )
        return ready, answered


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--machines", default="microvm,pc,q35")
    parser.add_argument("--quiet", action="store_true", help="add `quiet` to the kernel cmdline")
    args = parser.parse_args()
    for machine in args.machines.split(","):
        runs = [await one_boot(machine, args.quiet) for _ in range(args.runs)]
        for label, times in (("init ready", [r[0] for r in runs]), ("HTTP", [r[1] for r in runs])):
            shown = " ".join(f"{t:.2f}" for t in times)
            median = statistics.median(times)
            print(f"{machine:8} {label:10} median {median:.2f}s  runs: {shown}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
