"""The agent guest under QEMU: a real workload supervised, served and powered off in the guest.

Boots agent-initramfs.img (scripts/build_guest.py) with the example plugin `hello`'s own
hello.cpio appended (examples/plugins/hello; the kernel unpacks both) inside a private network
namespace, as test_qemu_guest.py does for the busybox guest, with a config disk carrying the
agent secret (and the manifest, when a test puts it there). vsock mode is not exercised: this
machine has no /dev/vhost-vsock.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from volant_agent.manifest import encode_config_disk

from scripts.guest.plugin_image import concat_initramfs
from tests.integration.test_qemu_guest import (
    BRIDGE_IP,
    GUEST_IP,
    ROOT,
    TAP,
    Guest,
    Netns,
    netns,
    run_dir,
)
from volant.model import LaunchSpec
from volant.runtime.cmdline import build_cmdline, encode_manifest
from volant.runtime.qemu import QemuDriver

__all__ = ["netns", "run_dir"]  # fixtures re-used from test_qemu_guest

pytestmark = pytest.mark.integration

AGENT = f"http://{GUEST_IP}:8080"
SECRET = "agent-guest-test-secret"
AUTH = ("-H", f"X-Volant-Agent-Secret: {SECRET}")
HELLO = ROOT / "examples" / "plugins" / "hello" / "manifest.json"
# Relative artifact paths in a manifest resolve against the manifest's directory.
HELLO_CPIO = HELLO.parent / json.loads(HELLO.read_text())["initramfs"]["path"]


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    out = ROOT / ".cache" / "guest"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_guest.py"), "--out", str(out)], check=True
    )
    return out


def hello_manifest(**workload: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(HELLO.read_text())
    doc["workload"].update(workload)
    return doc


async def boot(
    netns: Netns, guest_dir: Path, run_dir: Path, manifest: dict[str, Any] | None,
    on_disk: bool = False, dhcp: bool = False,
) -> Guest:  # fmt: skip
    """Boot the hello guest; its manifest on the command line, or on the config disk (which
    always carries SECRET) when on_disk."""
    driver = QemuDriver(machine="auto")
    disk = run_dir / "config.img"
    disk.write_bytes(encode_config_disk(manifest if on_disk else None, SECRET))
    initramfs = concat_initramfs(
        run_dir / "initramfs.img", [guest_dir / "agent-initramfs.img", HELLO_CPIO]
    )
    cmdline = build_cmdline(
        name="hello1", runtime="hello", plugin="hello", ip=None if dhcp else GUEST_IP,
        gateway=BRIDGE_IP, netmask="255.255.255.0", hypervisor_extras=driver.kernel_extras(),
        manifest=encode_manifest(manifest) if manifest is not None and not on_disk else None,
    )  # fmt: skip
    spec = LaunchSpec(
        name="hello1", cpus=1, memory_mb=256, kernel=guest_dir / "vmlinuz",
        initramfs=initramfs, cmdline=cmdline, mac="02:56:c0:a8:7f:02",
        run_dir=run_dir, console_log=run_dir / "console.log", tap=TAP, config_disk=disk,
    )  # fmt: skip
    hv = driver.for_vm(spec)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *netns.argv(*hv.command()), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return Guest(hv, proc, spec, started)


async def curl(
    netns: Netns, *args: str, timeout: float = 5, auth: tuple[str, ...] = AUTH
) -> tuple[int, str]:
    """(HTTP status, body) via curl inside the namespace, with the agent secret unless auth is
    (); status 0 when nothing answered."""
    argv = netns.argv("curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", *auth, *args)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    body, _, code = out.decode(errors="replace").rpartition("\n")
    return int(code or 0), body


async def get_json(netns: Netns, path: str, *args: str, base: str = AGENT) -> tuple[int, Any]:
    code, body = await curl(netns, *args, base + path)
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body


async def wait_for(
    g: Guest, netns: Netns, path: str, want: str, timeout: float = 120, base: str = AGENT
) -> tuple[int, Any]:
    """Poll the agent until the JSON at path has health/workload == want."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = await get_json(netns, path, base=base)
        if isinstance(last[1], dict) and want in (last[1].get("workload"), last[1].get("health")):
            return last
        assert g.proc.returncode is None, f"QEMU exited early:\n{g.console()[-3000:]}"
        await asyncio.sleep(0.3)
    pytest.fail(f"{path} never said {want} (last {last}):\n{g.console()[-4000:]}")


async def stop(g: Guest) -> None:
    if g.proc.returncode is None:
        g.proc.kill()
        await g.proc.wait()


async def test_workload_served_restarted_and_powered_off(
    netns: Netns, guest_dir: Path, run_dir: Path
) -> None:
    g = await boot(netns, guest_dir, run_dir, hello_manifest())
    try:
        await g.hv.wait_ready(30)
        code, health = await wait_for(g, netns, "/healthz", "healthy")
        print(f"\nagent guest: workload healthy {time.monotonic() - g.started:.2f}s after launch")
        assert (code, health) == (200, {"agent": "ok", "status": "ok", "workload": "healthy"})
        # Without the secret: a bare health probe, and 401 for the rest.
        code, body = await curl(netns, f"{AGENT}/healthz", auth=())
        assert (code, json.loads(body)) == (200, {"status": "ok"})
        for route in ("/v1/status", "/v1/greet"):
            code, body = await curl(netns, f"{AGENT}{route}", auth=())
            assert (code, json.loads(body)) == (401, {"error": "unauthorized"})

        code, status = await get_json(netns, "/v1/status")
        assert code == 200
        assert status["manifest"]["name"] == "hello"
        assert status["manifest"]["source"] == "cmdline"
        first_pid = status["workload"]["pid"]
        assert isinstance(first_pid, int)
        assert status["workload"]["restarts"] == 0
        print(f"agent RSS in the guest: {status['agent']['rss_kib']} KiB")

        code, greet = await get_json(netns, "/v1/greet")
        assert (code, greet) == (200, {"greeting": "hello from volant", "pid": first_pid})
        code, echo = await get_json(netns, "/v1/echo", "-X", "POST", "--data-binary", "hi")
        assert (code, echo) == (200, {"echo": "hi"})

        # The stream carries the workload's own output (its request log line for /greet).
        code, stream = await curl(netns, "-N", f"{AGENT}/v1/logs/stream?limit=100", timeout=3)
        assert "hello: GET /greet" in stream
        assert "event: log" in stream

        code, killed = await get_json(netns, "/v1/workload/kill", "-X", "POST")
        assert (code, killed["signalled"]) == (202, first_pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, status = await get_json(netns, "/v1/status")
            if status["workload"]["restarts"] == 1 and status["health"] == "healthy":
                break
            await asyncio.sleep(0.3)
        assert status["workload"]["restarts"] == 1, status
        assert status["health"] == "healthy"
        assert status["workload"]["pid"] not in (None, first_pid)
        assert status["workload"]["last_exit"] == -9

        # QMP system_powerdown -> ACPI button -> acpid -> PID 1 -> agent stops workload -> off.
        assert await g.hv.shutdown(graceful=True, timeout=60)
        assert await asyncio.wait_for(g.proc.wait(), 30) == 0
        console = g.console()
        assert "volant-init: powering off" in console
        assert "reboot: Power down" in console
    finally:
        await stop(g)


async def test_config_disk_unhealthy_workload_and_poweroff_route(
    netns: Netns, guest_dir: Path, run_dir: Path
) -> None:
    manifest = hello_manifest(
        env={"HELLO_NAME": "disk", "HELLO_PORT": "9000", "HELLO_UNHEALTHY": "1"},
        health_check={"path": "/health", "timeout_ms": 1000, "start_period_ms": 3000},
    )
    g = await boot(netns, guest_dir, run_dir, manifest, on_disk=True)
    try:
        await g.hv.wait_ready(30)
        code, health = await wait_for(g, netns, "/healthz", "unhealthy")
        assert code == 503
        assert health["status"] == "degraded"
        code, status = await get_json(netns, "/v1/status")
        assert status["manifest"]["source"] == "/dev/vda"
        assert status["health"] == "unhealthy"
        # The workload itself answers (once its slow start under TCG is over, which may be after
        # its 3 s start period): only its health check fails.
        deadline = time.monotonic() + 60
        while True:
            code, greet = await get_json(netns, "/v1/actions/greet")
            if code != 502 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert (code, greet["greeting"]) == (200, "hello from disk"), greet

        code, body = await get_json(netns, "/v1/poweroff", "-X", "POST")
        assert (code, body) == (202, {"status": "powering off"})
        assert await asyncio.wait_for(g.proc.wait(), 60) == 0
        assert "reboot: Power down" in g.console()
    finally:
        await stop(g)


async def test_dhcp_guest_gets_its_address_and_hostname(
    netns: Netns, guest_dir: Path, run_dir: Path
) -> None:
    # busybox udhcpd on the namespace's bridge; the netns fixture kills it with the namespace.
    conf = run_dir / "udhcpd.conf"
    conf.write_text(
        "start 192.168.127.50\nend 192.168.127.60\ninterface br0\n"
        f"lease_file {run_dir}/leases\npidfile {run_dir}/udhcpd.pid\n"
        f"option subnet 255.255.255.0\noption router {BRIDGE_IP}\n"
        # A fixed lease for the guest's MAC, so the test knows where to find it.
        "static_lease 02:56:c0:a8:7f:02 192.168.127.50\n"
    )
    (run_dir / "leases").touch()
    subprocess.run(netns.argv("busybox", "udhcpd", str(conf)), check=True)
    g = await boot(netns, guest_dir, run_dir, hello_manifest(), dhcp=True)
    try:
        await g.hv.wait_ready(30)
        base = "http://192.168.127.50:8080"
        await wait_for(g, netns, "/healthz", "healthy", base=base)
        _code, status = await get_json(netns, "/v1/status", base=base)
        assert status["agent"]["hostname"] == "hello1"
        assert "udhcpc: lease of 192.168.127.50 obtained" in g.console()
    finally:
        await stop(g)
