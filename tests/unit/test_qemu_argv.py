"""QEMU driver: argv, accelerator and machine choice, TSC detection, driver selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volant.engine.ports import Hypervisor, HypervisorDriver
from volant.model import AgentChannel, ChannelKind, Disk, InvalidArgument, LaunchSpec, Unavailable
from volant.runtime import select_driver
from volant.runtime.cloudhypervisor import CloudHypervisorDriver
from volant.runtime.qemu import Accel, Machine, QemuDriver, host_tsc_khz, resolve_machine

pytestmark = pytest.mark.unit

TSC = 2445406


def spec(run_dir: Path = Path("/run/volant/vms/web"), **kw: object) -> LaunchSpec:
    values: dict[str, object] = {
        "name": "web",
        "cpus": 2,
        "memory_mb": 512,
        "kernel": Path("/g/vmlinuz"),
        "initramfs": Path("/g/initramfs.img"),
        "cmdline": "console=ttyS0 reboot=k panic=1",
        "mac": "02:56:0a:0b:0c:0d",
        "run_dir": run_dir,
        "console_log": Path("/var/lib/volant/console/web.log"),
        "tap": "vt-0123456789",
    }
    values.update(kw)
    return LaunchSpec(**values)  # type: ignore[arg-type]


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_drivers_satisfy_the_engine_protocols() -> None:
    # Checked by mypy: the runtime matches the engine's Protocols without importing them.
    qemu: HypervisorDriver = QemuDriver(machine="pc")
    ch: HypervisorDriver = CloudHypervisorDriver()
    hv: Hypervisor = qemu.for_vm(spec())
    assert hv.kind == qemu.kind == "qemu"
    assert ch.for_vm(spec()).kind == "cloud-hypervisor"


def test_microvm_under_tcg() -> None:
    driver = QemuDriver(machine="microvm", accel="tcg", tsc_khz=TSC)
    argv = driver.for_vm(spec()).command()
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-accel") == ["tcg"]
    assert option(argv, "-cpu") == ["max"]
    assert option(argv, "-M") == ["microvm"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert "-S" not in argv
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-smp") == ["2"]
    assert option(argv, "-m") == ["512M"]
    assert option(argv, "-kernel") == ["/g/vmlinuz"]
    assert option(argv, "-initrd") == ["/g/initramfs.img"]
    assert option(argv, "-append") == ["console=ttyS0 reboot=k panic=1"]
    assert option(argv, "-netdev") == ["tap,id=n0,ifname=vt-0123456789,script=no,downscript=no"]
    assert option(argv, "-device") == [
        "virtio-net-device,netdev=n0,mac=02:56:0a:0b:0c:0d",
        "virtio-rng-device",
        "pvpanic",
    ]
    assert option(argv, "-chardev") == [
        "socket,id=ser0,path=/run/volant/vms/web/serial.sock,server=on,wait=off,"
        "logfile=/var/lib/volant/console/web.log,logappend=on",
        "socket,id=qmp,path=/run/volant/vms/web/api.sock,server=on,wait=off",
        "socket,id=qmpev,path=/run/volant/vms/web/events.sock,server=on,wait=off",
    ]
    assert option(argv, "-serial") == ["chardev:ser0"]
    # Commands use short sessions on the first monitor; a listener holds the second one.
    assert option(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=qmpev,mode=control"]
    assert "vhost" not in " ".join(argv)
    assert driver.kernel_extras() == ["reboot=t", "random.trust_cpu=on", f"tsc_early_khz={TSC}"]


def test_pc_uses_pci_devices_without_option_rom() -> None:
    driver = QemuDriver(machine="pc", accel="tcg")
    disks = (Disk(Path("/d/rootfs.erofs"), "rootfs"), Disk(Path("/d/a,b.img"), "data", False))
    argv = driver.for_vm(spec(config_disk=Path("/d/config.img"), disks=disks)).command()
    assert option(argv, "-M") == ["pc"]
    assert option(argv, "-device") == [
        "virtio-net-pci,netdev=n0,mac=02:56:0a:0b:0c:0d,romfile=",
        "virtio-rng-pci",
        "pvpanic",
        "virtio-blk-pci,drive=disk0,serial=volant-config",
        "virtio-blk-pci,drive=disk1,serial=rootfs",
        "virtio-blk-pci,drive=disk2,serial=data",
    ]
    assert option(argv, "-drive") == [
        "file=/d/config.img,if=none,id=disk0,format=raw,readonly=on",
        "file=/d/rootfs.erofs,if=none,id=disk1,format=raw,readonly=on",
        "file=/d/a,,b.img,if=none,id=disk2,format=raw,discard=unmap",
    ]
    assert driver.kernel_extras() == ["random.trust_cpu=on"]


def test_no_tap_no_initramfs_and_paused_start() -> None:
    argv = QemuDriver(machine="q35").argv(spec(tap=None, initramfs=None, start_paused=True))
    assert "-netdev" not in argv
    assert "-initrd" not in argv
    assert "-S" in argv


def test_networkless_vm_gets_a_virtio_serial_port_without_vhost_vsock() -> None:
    driver = QemuDriver(machine="q35", vhost_vsock=False)
    channel = driver.agent_channel(5)
    assert channel == AgentChannel(ChannelKind.SERIAL, 5)
    argv = driver.argv(spec(tap=None, agent_channel=channel))
    assert "-netdev" not in argv
    devices = option(argv, "-device")
    assert "virtio-serial-pci,id=vser0" in devices
    assert "virtserialport,bus=vser0.0,chardev=agent,name=org.volant.agent" in devices
    chardev = "socket,id=agent,path=/run/volant/vms/web/agent.sock,server=on,wait=off"
    assert chardev in option(argv, "-chardev")
    microvm = QemuDriver(machine="microvm", tsc_khz=TSC, vhost_vsock=False)
    assert "virtio-serial-device,id=vser0" in option(
        microvm.argv(spec(tap=None, agent_channel=channel)), "-device"
    )


def test_networkless_vm_gets_vhost_vsock_where_the_host_has_it() -> None:
    driver = QemuDriver(machine="q35", vhost_vsock=True)
    argv = driver.argv(spec(tap=None, agent_channel=driver.agent_channel(9)))
    assert "vhost-vsock-pci,guest-cid=9" in option(argv, "-device")
    assert not any("virtserialport" in device for device in option(argv, "-device"))


def test_commas_in_paths_are_escaped() -> None:
    argv = QemuDriver(machine="pc").argv(spec(console_log=Path("/logs/a,b.log")))
    assert "logfile=/logs/a,,b.log" in option(argv, "-chardev")[0]


def test_overlong_socket_path_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="too long"):
        QemuDriver(machine="pc").argv(spec(run_dir=Path("/run/" + "x" * 100)))


def test_kvm_uses_host_cpu_and_needs_no_hints() -> None:
    driver = QemuDriver(accel="kvm")
    assert driver.machine is Machine.MICROVM
    assert option(driver.argv(spec()), "-cpu") == ["host"]
    assert driver.kernel_extras() == ["reboot=t"]


def test_auto_accel_is_tcg() -> None:
    assert QemuDriver(accel="auto", machine="pc").accel is Accel.TCG


@pytest.mark.parametrize(
    ("machine", "accel", "tsc", "expected"),
    [
        (Machine.AUTO, Accel.TCG, TSC, Machine.MICROVM),
        (Machine.AUTO, Accel.TCG, None, Machine.Q35),
        (Machine.AUTO, Accel.KVM, None, Machine.MICROVM),
        (Machine.PC, Accel.TCG, None, Machine.PC),
    ],
)
def test_machine_resolution(
    machine: Machine, accel: Accel, tsc: int | None, expected: Machine
) -> None:
    assert resolve_machine(machine, accel, tsc) is expected


def test_microvm_under_tcg_without_tsc_rate_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="TSC"):
        resolve_machine(Machine.MICROVM, Accel.TCG, None)


def test_unknown_settings_are_invalid() -> None:
    with pytest.raises(InvalidArgument):
        QemuDriver(accel="hvf")
    with pytest.raises(InvalidArgument):
        QemuDriver(machine="virt")


CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"


def test_host_tsc_from_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert host_tsc_khz(tmp_path / "cpuinfo", tmp_path / "no-cpufreq") == TSC


@pytest.mark.parametrize("variant", ["aperfmperf", "cpufreq", "no-constant", "no-mhz"])
def test_host_tsc_unknown_when_cpuinfo_is_not_trustworthy(tmp_path: Path, variant: str) -> None:
    text = {
        "aperfmperf": CPUINFO.replace("nonstop_tsc", "nonstop_tsc aperfmperf"),
        "no-constant": CPUINFO.replace("constant_tsc ", ""),
        "no-mhz": CPUINFO.replace("cpu MHz", "bogomips"),
    }.get(variant, CPUINFO)
    (tmp_path / "cpuinfo").write_text(text)
    if variant == "cpufreq":
        (tmp_path / "cpufreq").mkdir()
    assert host_tsc_khz(tmp_path / "cpuinfo", tmp_path / "cpufreq") is None


def _bin_dir(tmp_path: Path, *names: str) -> str:
    for name in names:
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return str(tmp_path)


def test_select_auto_prefers_cloud_hypervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _bin_dir(tmp_path, "cloud-hypervisor", "qemu-system-x86_64"))
    driver = select_driver("auto")
    assert isinstance(driver, CloudHypervisorDriver)
    assert driver.binary == str(tmp_path / "cloud-hypervisor")


def test_select_auto_falls_back_to_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _bin_dir(tmp_path, "qemu-system-x86_64"))
    driver = select_driver("auto", machine="pc")
    assert isinstance(driver, QemuDriver)
    assert driver.machine is Machine.PC


def test_select_explicit_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _bin_dir(tmp_path, "qemu-system-x86_64"))
    assert isinstance(select_driver("qemu", accel="tcg", machine="q35"), QemuDriver)
    with pytest.raises(Unavailable, match="not on PATH"):
        select_driver("cloud-hypervisor")
    monkeypatch.setenv("PATH", os.fspath(tmp_path / "empty"))
    with pytest.raises(Unavailable, match="neither"):
        select_driver("auto")
    with pytest.raises(Unavailable, match="not on PATH"):
        select_driver("qemu")


def test_select_unknown_hypervisor() -> None:
    with pytest.raises(InvalidArgument, match="firecracker"):
        select_driver("firecracker")
