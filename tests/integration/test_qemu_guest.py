"""Real QEMU guests: boot the test guest on a tap inside a private network namespace.

Everything that owns a bridge or a tap lives in a namespace created (and deleted) here; the host's
root namespace is never touched. QEMU runs under TCG (see volant.runtime.qemu on why).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from volant.model import EndCause, HypervisorEnd, LaunchSpec
from volant.runtime.cmdline import build_cmdline
from volant.runtime.qemu import QemuDriver, QemuHypervisor

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
GUEST_IP = "192.168.127.2"
BRIDGE_IP = "192.168.127.1"
TAP = "vt-test0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def guest() -> Path:
    """The cached guest from scripts/build_guest.py (built once, reused across runs)."""
    out = ROOT / ".cache" / "guest"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_guest.py"), "--out", str(out)], check=True
    )
    return out


@dataclass(frozen=True)
class Netns:
    name: str

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _kill_namespace_processes(name: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A namespace with bridge 192.168.127.1/24 and one tap on it; deleted afterwards."""
    ns = Netns(f"volant-t-{secrets.token_hex(4)}")
    _ip("netns", "add", ns.name)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge"],
            ["addr", "add", f"{BRIDGE_IP}/24", "dev", "br0"],
            ["link", "set", "br0", "up"],
            ["tuntap", "add", "dev", TAP, "mode", "tap"],
            ["link", "set", TAP, "master", "br0"],
            ["link", "set", TAP, "up"],
        ):
            _ip("-n", ns.name, *cmd)
        yield ns
    finally:
        _kill_namespace_processes(ns.name)
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Under /tmp directly: AF_UNIX paths must stay short.
    path = Path(tempfile.mkdtemp(prefix="vt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Guest:
    hv: QemuHypervisor
    proc: asyncio.subprocess.Process
    spec: LaunchSpec
    started: float

    def console(self) -> str:
        try:
            return self.spec.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def make_spec(
    driver: QemuDriver, guest: Path, run_dir: Path, *, paused: bool = False
) -> LaunchSpec:
    cmdline = build_cmdline(
        name="web",
        runtime="caddy",
        plugin="caddy",
        ip=GUEST_IP,
        gateway=BRIDGE_IP,
        netmask="255.255.255.0",
        hypervisor_extras=driver.kernel_extras(),
    )
    return LaunchSpec(
        name="web",
        cpus=1,
        memory_mb=256,
        kernel=guest / "vmlinuz",
        initramfs=guest / "initramfs.img",
        cmdline=cmdline,
        mac="02:56:c0:a8:7f:02",
        run_dir=run_dir,
        console_log=run_dir / "console.log",
        tap=TAP,
        start_paused=paused,
    )


@pytest.fixture
async def launch(
    guest: Path, netns: Netns, run_dir: Path
) -> AsyncIterator[tuple[Netns, list[Guest]]]:
    """Starts QEMU in the namespace on request; kills whatever is left at the end."""
    guests: list[Guest] = []
    yield netns, guests
    for g in guests:
        if g.proc.returncode is None:
            g.proc.kill()
            await g.proc.wait()


async def start(
    launch: tuple[Netns, list[Guest]], guest: Path, run_dir: Path, machine: str, **kw: bool
) -> Guest:
    netns, guests = launch
    driver = QemuDriver(machine=machine)
    spec = make_spec(driver, guest, run_dir, **kw)
    hv = driver.for_vm(spec)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *netns.argv(*hv.command()), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    g = Guest(hv, proc, spec, started)
    guests.append(g)
    return g


async def http_get(netns: Netns, url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *netns.argv("curl", "-s", "-m", "2", url), stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


async def wait_http(netns: Netns, g: Guest, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = await http_get(netns, f"http://{GUEST_IP}:8080/")
        if body:
            return body
        assert g.proc.returncode is None, f"QEMU exited early:\n{g.console()[-3000:]}"
        await asyncio.sleep(0.2)
    pytest.fail(f"guest did not answer HTTP within {timeout}s:\n{g.console()[-3000:]}")


async def wait_exit(g: Guest, timeout: float = 10.0) -> int:
    return await asyncio.wait_for(g.proc.wait(), timeout)


@pytest.mark.parametrize("machine", ["microvm", "pc"])
async def test_guest_boots_serves_http_and_powers_off(
    launch: tuple[Netns, list[Guest]], guest: Path, run_dir: Path, machine: str
) -> None:
    netns, _ = launch
    g = await start(launch, guest, run_dir, machine)
    await g.hv.wait_ready(30)
    info = await g.hv.info()
    assert info["status"] == "running"
    assert info["accel"] == "tcg"
    assert info["machine"] == machine

    body = await wait_http(netns, g)
    boot_seconds = time.monotonic() - g.started
    print(f"\n{machine}: HTTP answered {boot_seconds:.2f}s after launch")
    assert "volant-guest name=web plugin=caddy" in body

    console = g.console()
    assert "Linux version" in console
    assert "volant-init: ready name=web plugin=caddy" in console

    # The ACPI power button reaches acpid in the guest, which powers off; QEMU then exits.
    assert await g.hv.shutdown(graceful=True, timeout=30)
    assert await wait_exit(g) == 0
    assert "reboot: Power down" in g.console()
    # Once QEMU is gone, another shutdown is a no-op that still reports success.
    assert await g.hv.shutdown(graceful=False, timeout=5)


async def test_quit_stops_a_running_guest(
    launch: tuple[Netns, list[Guest]], guest: Path, run_dir: Path
) -> None:
    g = await start(launch, guest, run_dir, "auto")
    await g.hv.wait_ready(30)
    follower = asyncio.create_task(g.hv.follow())
    await asyncio.sleep(1)  # let it connect: what QEMU says before that is not heard
    assert await g.hv.shutdown(graceful=False, timeout=10)
    assert await wait_exit(g) == 0
    assert await g.hv.end_cause(5) == HypervisorEnd(EndCause.HOST_REQUEST, "host-qmp-quit")
    await asyncio.wait_for(follower, 5)  # it ends on its own once QEMU has gone


async def test_graceful_shutdown_falls_back_to_quit(
    launch: tuple[Netns, list[Guest]], guest: Path, run_dir: Path
) -> None:
    # A guest held at -S never sees the power button, so only `quit` can end it.
    g = await start(launch, guest, run_dir, "auto", paused=True)
    await g.hv.wait_ready(30)
    assert (await g.hv.info())["status"] == "prelaunch"
    began = time.monotonic()
    assert await g.hv.shutdown(graceful=True, timeout=4)
    assert time.monotonic() - began < 5
    assert await wait_exit(g) == 0


async def shell(g: Guest, command: bytes, timeout: float = 90.0) -> None:
    """Run command in the guest's console shell, once the shell answers, and stay attached
    until QEMU closes the console (closing it at once can lose the command's newline)."""
    reader, writer = await asyncio.open_unix_connection(str(g.spec.serial_socket))
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\nmark-42\r\n" not in seen:
                writer.write(b"echo mark-$((6*7))\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        while b"\nmark-42\r\n" not in seen:
                            seen += await reader.read(4096)
        writer.write(command + b"\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        pytest.fail(f"no shell, or no end after {command!r}:\n{g.console()[-3000:]}")
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("command", "cause", "reason"),
    [
        (b"poweroff", EndCause.GUEST_POWEROFF, "guest-shutdown"),
        (b"reboot -f", EndCause.GUEST_RESET, "guest-reset"),  # -no-reboot turns it into an exit
        (b"echo c > /proc/sysrq-trigger", EndCause.GUEST_PANIC, "guest-panic"),  # via pvpanic
    ],
    ids=["poweroff", "reboot", "panic"],
)
async def test_qemu_says_why_the_guest_ended(
    launch: tuple[Netns, list[Guest]],
    guest: Path,
    run_dir: Path,
    command: bytes,
    cause: EndCause,
    reason: str,
) -> None:
    # q35 needs no TSC hint; a loaded host sometimes stalls a microvm TCG guest's early boot.
    g = await start(launch, guest, run_dir, "q35")
    await g.hv.wait_ready(30)
    follower = asyncio.create_task(g.hv.follow())
    await shell(g, command)
    assert await wait_exit(g, 60) == 0  # the exit status alone tells none of them apart
    assert await g.hv.end_cause(5) == HypervisorEnd(cause, reason)
    await asyncio.wait_for(follower, 5)


async def test_a_killed_qemu_said_nothing(
    launch: tuple[Netns, list[Guest]], guest: Path, run_dir: Path
) -> None:
    g = await start(launch, guest, run_dir, "auto")
    await g.hv.wait_ready(30)
    follower = asyncio.create_task(g.hv.follow())
    await asyncio.sleep(1)  # let it connect
    # Commands still get through while the listener holds the second monitor.
    assert (await g.hv.info())["status"] == "running"
    g.proc.kill()
    assert await wait_exit(g) == -9
    assert await g.hv.end_cause(5) == HypervisorEnd(EndCause.UNKNOWN, "")
    await asyncio.wait_for(follower, 5)


async def test_a_qemu_without_the_events_monitor_is_unknown(run_dir: Path) -> None:
    # Started by an older volantd (no events socket): nothing to listen to, nothing told.
    driver = QemuDriver(machine="pc")
    hv = driver.for_vm(make_spec(driver, run_dir, run_dir))
    await asyncio.wait_for(hv.follow(), 5)
    assert await hv.end_cause(5) == HypervisorEnd()
