"""QEMU launcher: argv for the microvm/pc/q35 machines and control over QMP.

Accelerator choice: `auto` resolves to TCG. The presence of /dev/kvm proves nothing (on nested
paravirtual KVM QEMU aborts setting MSRs, or the guest stalls in the firmware), and a real probe
would mean booting a guest at daemon start. Operators with working KVM set `accel = kvm`.

Machine choice: `auto` picks microvm, the fastest to boot (TCG, 1 vCPU, Debian cloud kernel and the
test initramfs, launch to HTTP answer: microvm about 3.0-4.4 s, pc 4.1-5.1 s, q35 4.3-5.3 s),
unless the guest would run under TCG and the host TSC rate is unknown: microvm has no HPET, PM
timer or kvmclock under TCG, so the guest kernel needs `tsc_early_khz=` or it hangs calibrating
its TSC. Then `auto` falls back to q35, which needs no hint. pc and q35 stay selectable.

Every socket path lives in spec.run_dir (which must exist); the console log is QEMU's own
`logfile=` on the serial chardev, so it is complete even when nobody is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError

from volant.model import (
    AgentChannel,
    ChannelKind,
    HypervisorEnd,
    HypervisorFailed,
    InvalidArgument,
    LaunchSpec,
    Unavailable,
)
from volant.runtime.agentlink import SERIAL_PORT_NAME, SERIAL_SOCKET, agent_relay
from volant.runtime.qemu_events import EVENTS_SOCKET, ShutdownListener
from volant.runtime.qmp import QMPBusy, QMPGone, QMPSession, qmp_session

log = logging.getLogger(__name__)

QMP_CONNECT_TIMEOUT = 2.0
QUIT_GRACE = 5.0  # what a graceful shutdown keeps back from its timeout for the `quit` fallback
_FAILED_STATES = frozenset({"shutdown", "guest-panicked", "internal-error", "io-error"})
_UNIX_PATH_MAX = 107


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Machine(StrEnum):
    AUTO = "auto"
    MICROVM = "microvm"
    PC = "pc"
    Q35 = "q35"


def host_tsc_khz(
    cpuinfo: Path = Path("/proc/cpuinfo"),
    cpufreq: Path = Path("/sys/devices/system/cpu/cpu0/cpufreq"),
) -> int | None:
    """The host TSC rate in kHz, when /proc/cpuinfo states it reliably; else None.

    A TCG guest's TSC ticks at the host's rate. "cpu MHz" equals the calibrated TSC rate only when
    neither cpufreq nor APERF/MPERF sampling rewrites it with the current clock, so it is trusted
    only then.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    if cpufreq.exists():
        return None
    mhz: float | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "cpu MHz" and mhz is None:
            with contextlib.suppress(ValueError):
                mhz = float(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
    if mhz is None or "constant_tsc" not in flags or "aperfmperf" in flags:
        return None
    return round(mhz * 1000)


def resolve_machine(machine: Machine, accel: Accel, tsc_khz: int | None) -> Machine:
    """The machine to run: `auto` is microvm unless TCG would leave its guest without a clock."""
    untimed = accel is Accel.TCG and tsc_khz is None
    if machine is Machine.AUTO:
        return Machine.Q35 if untimed else Machine.MICROVM
    if machine is Machine.MICROVM and untimed:
        raise Unavailable(
            "microvm under TCG needs the host TSC rate, and it could not be read",
            hint="set the QEMU TSC rate in kHz explicitly, or use machine pc or q35",
        )
    return machine


def _opt(value: str | Path) -> str:
    """Escape a value inside a QEMU `key=value,...` option (a comma is written twice)."""
    return str(value).replace(",", ",,")


class QemuDriver:
    """Hypervisor driver for QEMU (kind "qemu"); one instance serves every VM."""

    kind: str = "qemu"

    def __init__(
        self,
        *,
        binary: str = "qemu-system-x86_64",
        accel: str = "auto",
        machine: str = "auto",
        tsc_khz: int | None = None,
        vhost_vsock: bool | None = None,
    ) -> None:
        try:
            wanted_accel, wanted_machine = Accel(accel), Machine(machine)
        except ValueError as exc:
            raise InvalidArgument(f"QEMU driver: {exc}", field="runtime") from exc
        self.binary = binary
        self.accel = Accel.TCG if wanted_accel is Accel.AUTO else wanted_accel
        if tsc_khz is None and self.accel is Accel.TCG:
            tsc_khz = host_tsc_khz()
        self.tsc_khz = tsc_khz
        self.machine = resolve_machine(wanted_machine, self.accel, tsc_khz)
        if vhost_vsock is None:
            vhost_vsock = Path("/dev/vhost-vsock").exists()
        self.vhost_vsock = vhost_vsock

    def agent_channel(self, cid: int) -> AgentChannel:
        """A network-less VM's channel: vsock where the host has vhost-vsock, else a
        virtio-serial port on a unix socket."""
        return AgentChannel(ChannelKind.VSOCK if self.vhost_vsock else ChannelKind.SERIAL, cid)

    @property
    def microvm(self) -> bool:
        return self.machine is Machine.MICROVM

    def kernel_extras(self) -> list[str]:
        """Kernel arguments this driver's guests need; pass them to build_cmdline(extras=...)."""
        extras: list[str] = []
        if self.microvm:
            # microvm has no i8042, so the base line's reboot=k spins forever at "machine
            # restart" (seen under TCG); a triple fault resets any machine, and under
            # -no-reboot QEMU then exits with SHUTDOWN guest-reset. The last reboot= wins.
            extras.append("reboot=t")
        if self.accel is Accel.TCG:
            # TCG offers RDRAND with -cpu max; trusting it avoids early entropy starvation.
            extras.append("random.trust_cpu=on")
            if self.microvm:
                extras.append(f"tsc_early_khz={self.tsc_khz}")
        return extras

    def for_vm(self, spec: LaunchSpec) -> QemuHypervisor:
        return QemuHypervisor(self, spec)

    def argv(self, spec: LaunchSpec) -> list[str]:
        """The full QEMU command line for spec."""
        for sock in (spec.api_socket, spec.serial_socket, spec.run_dir / EVENTS_SOCKET):
            if len(str(sock)) > _UNIX_PATH_MAX:
                raise InvalidArgument(f"socket path too long for AF_UNIX: {sock}", field="run_dir")
        bus = "device" if self.microvm else "pci"
        argv = [self.binary, "-name", f"{spec.name},process=volant-{spec.name}"]
        argv += ["-accel", self.accel.value]
        argv += ["-cpu", "max" if self.accel is Accel.TCG else "host"]
        argv += ["-M", self.machine.value]
        argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
        argv += ["-smp", str(spec.cpus), "-m", f"{spec.memory_mb}M"]
        argv += ["-kernel", str(spec.kernel), "-append", spec.cmdline]
        if spec.initramfs is not None:
            argv += ["-initrd", str(spec.initramfs)]
        if spec.tap is not None:
            argv += ["-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no"]
            nic = f"virtio-net-{bus},netdev=n0,mac={spec.mac}"
            # No PXE option ROM: the kernel is loaded directly, and the ROM only costs boot time.
            argv += ["-device", nic if self.microvm else f"{nic},romfile="]
        argv += _agent_channel(spec, bus)
        argv += ["-device", f"virtio-rng-{bus}"]
        # A guest kernel panic reaches QEMU through pvpanic (the guest loads pvpanic_mmio) and
        # ends it with SHUTDOWN reason guest-panic instead of a reset that looks like a reboot.
        argv += ["-device", "pvpanic"]
        for index, disk in enumerate(spec.all_disks):
            drive = f"file={_opt(disk.path)},if=none,id=disk{index},format=raw"
            drive += ",readonly=on" if disk.read_only else ",discard=unmap"
            device = f"virtio-blk-{bus},drive=disk{index},serial={_opt(disk.serial)}"
            argv += ["-drive", drive, "-device", device]
        serial = f"socket,id=ser0,path={_opt(spec.serial_socket)},server=on,wait=off"
        # The socket keeps nothing while no client is attached; the logfile keeps everything.
        serial += f",logfile={_opt(spec.console_log)},logappend=on"
        argv += ["-chardev", serial, "-serial", "chardev:ser0"]
        qmp = f"socket,id=qmp,path={_opt(spec.api_socket)},server=on,wait=off"
        argv += ["-chardev", qmp, "-mon", "chardev=qmp,mode=control"]
        # A second monitor that only the ShutdownListener holds (see volant.runtime.qemu_events).
        events = f"socket,id=qmpev,path={_opt(spec.run_dir / EVENTS_SOCKET)},server=on,wait=off"
        argv += ["-chardev", events, "-mon", "chardev=qmpev,mode=control"]
        argv += ["-pidfile", str(spec.run_dir / "qemu.pid")]
        if spec.start_paused:
            argv.append("-S")
        return argv


def _agent_channel(spec: LaunchSpec, bus: str) -> list[str]:
    """The devices that carry a network-less VM's agent connections (none for a VM with a NIC)."""
    channel = spec.agent_channel
    if channel is None:
        return []
    if channel.kind is ChannelKind.VSOCK:
        return ["-device", f"vhost-vsock-{bus},guest-cid={channel.cid}"]
    if channel.kind is not ChannelKind.SERIAL:
        raise InvalidArgument(f"QEMU has no {channel.kind} agent channel", field="network.mode")
    path = spec.run_dir / SERIAL_SOCKET
    if len(str(path)) > _UNIX_PATH_MAX:
        raise InvalidArgument(f"socket path too long for AF_UNIX: {path}", field="run_dir")
    port = f"virtserialport,bus=vser0.0,chardev=agent,name={SERIAL_PORT_NAME}"
    return [
        "-device", f"virtio-serial-{bus},id=vser0",
        "-chardev", f"socket,id=agent,path={_opt(path)},server=on,wait=off",
        "-device", port,
    ]  # fmt: skip


class QemuHypervisor:
    """One VM's QEMU, controlled through its QMP socket (spec.api_socket)."""

    kind: str = "qemu"

    def __init__(self, driver: QemuDriver, spec: LaunchSpec) -> None:
        self._driver = driver
        self.spec = spec
        # QMP serves one client at a time; calls from this object take turns.
        self._lock = asyncio.Lock()
        self._events = ShutdownListener(spec.run_dir / EVENTS_SOCKET, spec.name)

    def command(self) -> list[str]:
        return self._driver.argv(self.spec)

    def _session(
        self, timeout: float = QMP_CONNECT_TIMEOUT
    ) -> contextlib.AbstractAsyncContextManager[QMPSession]:
        return qmp_session(self.spec.api_socket, f"volant-{self.spec.name}", timeout)

    def _ready_states(self) -> frozenset[str]:
        if self.spec.start_paused:
            return frozenset({"running", "paused", "prelaunch"})
        return frozenset({"running"})

    async def wait_ready(self, timeout: float) -> None:
        """Poll QMP until query-status reports the expected state; raise HypervisorFailed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with self._lock, self._session(min(remaining, QMP_CONNECT_TIMEOUT)) as qmp:
                    status = (await qmp.execute("query-status"))["status"]
            except (QMPGone, QMPBusy, QMPError, OSError) as exc:
                last = str(exc)
            else:
                if status in self._ready_states():
                    return
                if status in _FAILED_STATES:
                    raise HypervisorFailed(f"QEMU for {self.spec.name} is in state {status}")
                last = f"status {status}"
            await asyncio.sleep(0.05)
        raise HypervisorFailed(
            f"QEMU for {self.spec.name} did not become ready within {timeout:.0f}s ({last})",
            hint=f"see the console log {self.spec.console_log}",
        )

    async def shutdown(self, *, graceful: bool, timeout: float) -> bool:
        """ACPI power button first when graceful, then `quit`; True once QEMU has gone away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with self._lock, self._session(min(timeout, QMP_CONNECT_TIMEOUT)) as qmp:
                if graceful:
                    await qmp.execute("system_powerdown")
                    grace = deadline - loop.time() - min(QUIT_GRACE, timeout / 2)
                    if await qmp.wait_closed(grace):
                        return True
                    log.info("%s ignored the power button; quitting QEMU", self.spec.name)
                # QEMU may close the socket before it answers `quit`.
                with contextlib.suppress(QMPError):
                    await qmp.execute("quit")
                return await qmp.wait_closed(deadline - loop.time())
        except QMPGone:
            return True
        except (QMPBusy, QMPError, OSError) as exc:
            log.warning("shutdown of %s over QMP failed: %s", self.spec.name, exc)
            return False

    async def follow(self) -> None:
        """Hold the events monitor while QEMU runs, to learn why it ends; returns once gone.
        A network-less VM's agent relay runs as long."""
        async with agent_relay(self.spec):
            await self._events.run()

    async def end_cause(self, timeout: float) -> HypervisorEnd:
        """Why QEMU ended, from its SHUTDOWN event (UNKNOWN when it said none, or when follow()
        never ran); waits up to timeout for the event still in flight."""
        return await self._events.end(timeout)

    async def info(self) -> dict[str, Any]:
        """Run state, QEMU version, accelerator and machine; raises HypervisorFailed."""
        try:
            async with self._lock, self._session() as qmp:
                status = await qmp.execute("query-status")
                kvm = await qmp.execute("query-kvm")
                version = qmp.version
        except (QMPGone, QMPBusy, QMPError, OSError) as exc:
            raise HypervisorFailed(f"QEMU for {self.spec.name} does not answer: {exc}") from exc
        return {
            "hypervisor": self.kind,
            "status": status["status"],
            "running": bool(status["running"]),
            "version": version,
            "accel": "kvm" if kvm.get("enabled") else "tcg",
            "machine": self._driver.machine.value,
        }
