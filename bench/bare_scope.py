"""Runs inside the sysbox: time QEMU started bare with `systemd-run --scope` until QMP answers.

This is the floor volantd's create latency is compared against: the same argv as the QEMU
driver builds, in a transient scope, without the store, the tap or the REST round trip.
Prints one JSON list of seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from volant.model import LaunchSpec
from volant.runtime import QemuDriver

GUEST = Path(__file__).resolve().parent.parent / ".cache" / "guest"


async def one(n: int, driver: QemuDriver, tmp: Path) -> float:
    run_dir = tmp / f"bare{n}"
    run_dir.mkdir()
    spec = LaunchSpec(
        name=f"bare{n}",
        cpus=1,
        memory_mb=96,
        kernel=GUEST / "vmlinuz",
        initramfs=GUEST / "initramfs.img",
        cmdline="console=ttyS0 " + " ".join(driver.kernel_extras()),
        mac="02:56:00:00:00:01",
        run_dir=run_dir,
        console_log=run_dir / "console.log",
        start_paused=True,
    )
    hv = driver.for_vm(spec)
    unit = f"bench-bare-{n}.scope"
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "systemd-run", "--scope", "--quiet", f"--unit={unit}", "--slice=volant.slice",
        "--collect", *hv.command(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await hv.wait_ready(30)
        return time.perf_counter() - started
    finally:
        kill = await asyncio.create_subprocess_exec("systemctl", "kill", "-s", "KILL", unit)
        await kill.wait()
        await proc.wait()


async def main(count: int) -> None:
    driver = QemuDriver(accel="tcg")
    with tempfile.TemporaryDirectory() as tmp:
        times = [await one(n, driver, Path(tmp)) for n in range(count)]
    print(json.dumps(times))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
