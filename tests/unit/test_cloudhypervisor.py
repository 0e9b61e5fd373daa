"""Cloud Hypervisor driver: argv against CH's documented CLI, API client against the FAKE CH.

No CH binary exists on these machines; tests/fakes/fake_cloud_hypervisor.py stands in for it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_cloud_hypervisor import CLIError, FakeCloudHypervisor, parse_cli
from volant.model import (
    AgentChannel,
    ChannelKind,
    Disk,
    EndCause,
    HypervisorEnd,
    HypervisorFailed,
    InvalidArgument,
    LaunchSpec,
)
from volant.runtime.agentlink import hypervisor_sockets
from volant.runtime.ch_events import parse_events
from volant.runtime.cloudhypervisor import (
    CloudHypervisorAPI,
    CloudHypervisorAPIError,
    CloudHypervisorDriver,
    CloudHypervisorUnreachable,
    CloudHypervisorVM,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vt-ch-", dir="/tmp"))  # short AF_UNIX paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_spec(run_dir: Path, **kw: object) -> LaunchSpec:
    values: dict[str, object] = {
        "name": "web",
        "cpus": 2,
        "memory_mb": 512,
        "kernel": Path("/g/vmlinuz"),
        "initramfs": Path("/g/initramfs.img"),
        "cmdline": "console=ttyS0 reboot=k panic=1 volant.plugin=caddy",
        "mac": "02:56:0a:0b:0c:0d",
        "run_dir": run_dir,
        "console_log": run_dir / "console.log",
        "tap": "vt-0123456789",
    }
    values.update(kw)
    return LaunchSpec(**values)  # type: ignore[arg-type]


def vm(run_dir: Path, **kw: object) -> CloudHypervisorVM:
    return CloudHypervisorDriver().for_vm(make_spec(run_dir, **kw))


def test_argv_follows_the_documented_cli(run_dir: Path) -> None:
    disks = (Disk(Path("/d/vol.img"), "data", read_only=False),)
    argv = vm(run_dir, config_disk=Path("/d/config.img"), disks=disks).command()
    assert argv == [
        "cloud-hypervisor",
        "--api-socket", f"path={run_dir}/api.sock",
        "--event-monitor", f"path={run_dir}/events.json",
        "--kernel", "/g/vmlinuz",
        "--initramfs", "/g/initramfs.img",
        "--cmdline", "console=ttyS0 reboot=k panic=1 volant.plugin=caddy",
        "--cpus", "boot=2",
        "--memory", "size=512M",
        "--net", "tap=vt-0123456789,mac=02:56:0a:0b:0c:0d",
        "--serial", f"socket={run_dir}/serial.sock",
        "--console", "off",
        "--rng", "src=/dev/urandom",
        "--disk", "path=/d/config.img,readonly=on,image_type=raw,serial=volant-config",
        "--disk", "path=/d/vol.img,readonly=off,image_type=raw,serial=data",
    ]  # fmt: skip
    parsed = parse_cli(argv)
    assert parsed["--disk"] == [
        {"path": "/d/config.img", "readonly": "on", "image_type": "raw", "serial": "volant-config"},
        {"path": "/d/vol.img", "readonly": "off", "image_type": "raw", "serial": "data"},
    ]


def test_argv_without_optional_parts_still_parses(run_dir: Path) -> None:
    argv = vm(run_dir, tap=None, initramfs=None).command()
    assert "--net" not in argv
    assert "--initramfs" not in argv
    assert parse_cli(argv)["--kernel"] == "/g/vmlinuz"


def test_networkless_vm_gets_a_hybrid_vsock(run_dir: Path) -> None:
    channel = CloudHypervisorDriver().agent_channel(7)
    assert channel == AgentChannel(ChannelKind.HYBRID, 7)
    spec = make_spec(run_dir, tap=None, agent_channel=channel)
    argv = CloudHypervisorDriver().argv(spec)
    assert "--net" not in argv
    assert parse_cli(argv)["--vsock"] == {"cid": "7", "socket": f"{run_dir}/vsock.sock"}
    # CH binds it anew at each start: a stale one from the last run is removed first.
    assert run_dir / "vsock.sock" in hypervisor_sockets(spec)
    assert hypervisor_sockets(make_spec(run_dir)) == []
    with pytest.raises(CLIError, match="cid"):
        parse_cli(["cloud-hypervisor", "--kernel", "k", "--vsock", "cid=2,socket=/s"])


def test_cli_check_catches_what_ch_refuses() -> None:
    with pytest.raises(CLIError, match="payload"):
        parse_cli(["cloud-hypervisor", "--cpus", "boot=1"])
    with pytest.raises(CLIError, match="unknown key"):
        parse_cli(["cloud-hypervisor", "--kernel", "k", "--net", "tap=t,vhost=on"])
    with pytest.raises(CLIError, match="unknown option"):
        parse_cli(["cloud-hypervisor", "--kernel", "k", "--no-reboot", "x"])


def test_start_paused_and_commas_are_refused(run_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="paused"):
        vm(run_dir, start_paused=True).command()
    with pytest.raises(InvalidArgument, match="comma"):
        vm(run_dir, disks=(Disk(Path("/d/a,b.img"), "data"),)).command()


def test_no_kernel_extras() -> None:
    assert CloudHypervisorDriver().kernel_extras() == []


async def test_api_calls_and_error_bodies(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        async with CloudHypervisorAPI(hv.spec.api_socket) as api:
            ping = await api.ping()
            assert ping["version"] == "53.0"
            info = await api.vm_info()
            assert info["state"] == "Running"
            assert info["config"]["payload"]["kernel"] == "/g/vmlinuz"
            assert info["config"]["net"] == [{"tap": "vt-0123456789", "mac": "02:56:0a:0b:0c:0d"}]
            await api.vm_shutdown()
            assert (await api.vm_info())["state"] == "Created"
            with pytest.raises(CloudHypervisorAPIError) as err:
                await api.power_button()
            assert err.value.status == 500
            assert err.value.messages[0] == "Error from API"
            await api.vmm_shutdown()
        await asyncio.wait_for(fake.exited.wait(), 2)
    assert not hv.spec.api_socket.exists()


async def test_api_error_404_before_vm_create(run_dir: Path) -> None:
    async with (
        FakeCloudHypervisor(run_dir / "api.sock"),
        CloudHypervisorAPI(run_dir / "api.sock") as api,
    ):
        with pytest.raises(CloudHypervisorAPIError) as err:
            await api.vm_info()
        assert err.value.status == 404
        assert len(err.value.messages) == 2


async def test_unreachable_socket(run_dir: Path) -> None:
    async with CloudHypervisorAPI(run_dir / "api.sock") as api:
        with pytest.raises(CloudHypervisorUnreachable):
            await api.ping()


async def test_wait_ready_polls_until_the_api_answers(run_dir: Path) -> None:
    hv = vm(run_dir)
    fake = FakeCloudHypervisor.from_argv(hv.command())

    async def start_late() -> None:
        await asyncio.sleep(0.3)
        await fake.__aenter__()

    starter = asyncio.create_task(start_late())
    try:
        await hv.wait_ready(5)
        assert (await hv.info())["status"] == "running"
    finally:
        await starter
        await fake.__aexit__(None, None, None)


async def test_wait_ready_times_out(run_dir: Path) -> None:
    began = time.monotonic()
    with pytest.raises(HypervisorFailed, match="did not answer"):
        await vm(run_dir).wait_ready(0.5)
    assert time.monotonic() - began < 2


async def test_graceful_shutdown_uses_the_power_button(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        assert await hv.shutdown(graceful=True, timeout=5)
        assert ("PUT", "vm.power-button") in fake.requests
        assert ("PUT", "vmm.shutdown") not in fake.requests


async def test_graceful_shutdown_falls_back_to_vmm_shutdown(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command(), acpi_handled=False) as fake:
        began = time.monotonic()
        assert await hv.shutdown(graceful=True, timeout=1)
        assert time.monotonic() - began < 1.5
        assert fake.requests.index(("PUT", "vm.power-button")) < fake.requests.index(
            ("PUT", "vmm.shutdown")
        )


async def test_hard_shutdown_and_already_gone(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        assert await hv.shutdown(graceful=False, timeout=5)
        assert ("PUT", "vm.power-button") not in fake.requests
    assert await hv.shutdown(graceful=True, timeout=1)


async def test_info_without_api_is_hypervisor_failed(run_dir: Path) -> None:
    with pytest.raises(HypervisorFailed):
        await vm(run_dir).info()


def event_names(path: Path) -> list[str]:
    return [f"{e['source']} {e['event']}" for e in parse_events(path.read_text())]


async def test_guest_poweroff_is_told_by_the_event_monitor(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        await hv.follow()  # CH keeps its events in a file: nothing to hold open
        fake.guest_poweroff()
        await asyncio.wait_for(fake.exited.wait(), 2)
    assert event_names(run_dir / "events.json") == [
        "vmm starting",
        "vm booting",
        "vm booted",
        "vm shutdown",
        "vm deleted",
        "vmm shutdown",
    ]
    assert await hv.end_cause(1) == HypervisorEnd(EndCause.GUEST_POWEROFF, "vmm shutdown")


async def test_a_killed_vmm_said_nothing(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        await fake.kill()
    assert event_names(run_dir / "events.json")[-1] == "vm booted"
    assert await hv.end_cause(1) == HypervisorEnd(EndCause.UNKNOWN, "last event vm booted")


async def test_a_vmm_that_never_wrote_events_is_unknown(run_dir: Path) -> None:
    # e.g. started by a volantd that did not pass --event-monitor yet.
    assert await vm(run_dir).end_cause(1) == HypervisorEnd()


async def test_restart_truncates_the_event_file(run_dir: Path) -> None:
    hv = vm(run_dir)
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        fake.guest_poweroff()
    assert (await hv.end_cause(1)).cause is EndCause.GUEST_POWEROFF
    async with FakeCloudHypervisor.from_argv(hv.command()) as fake:
        await fake.kill()
    assert (await hv.end_cause(1)).cause is EndCause.UNKNOWN
