"""DHCP and DNS on the bridge: volantd's dnsmasq, and what its leases tell about VMs.

One dnsmasq (volant.network.dnsmasq) runs as the helper `dnsmasq` (a transient service
`volant-dnsmasq.service`, or a child; volant.host.helpers) and outlives volantd, as the guests
that rely on it do. It is recorded in the ledger (ResourceKind.DNSMASQ); at start the one that
runs is adopted when it was started with the command line volantd would use now (kept in its
run directory next to the pid file), and restarted otherwise.

The lease file is read, not a `--dhcp-script`: it holds every lease whether or not volantd ran
when the guest asked, so a restarted volantd learns what it missed, with nothing to deliver.
`Leases` (volant.engine.leases) polls it and names every VM in DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from volant.config import Config
from volant.engine.leases import Leases
from volant.engine.ledger import Ledger
from volant.engine.ports import Helpers, Store
from volant.model import ResourceKind, Unavailable, VirtualMachine, VolantError
from volant.network import dnsmasq
from volant.network.dnsmasq import Lease, Plan

log = logging.getLogger("volant.engine.engine")

HELPER = "dnsmasq"
UNIT = f"volant-{HELPER}.service"
PID_WAIT = 10.0
RELEASE_WAIT = 5.0
ALIVE_EVERY = 5.0
RepairEmit = Callable[[str, dict[str, Any]], Awaitable[None]]


def plan_of(config: Config) -> Plan:
    return Plan(
        bridge=config.network_bridge,
        subnet=IPv4Network(config.network_subnet),
        host_ip=IPv4Address(config.network_host_ip),
        domain=config.network_domain,
        run_dir=config.runtime_dir / "dnsmasq",
        lease_file=config.state_dir / "dnsmasq.leases",
    )


class Dns:
    """Starts, adopts or restarts the dnsmasq, releases leases, and follows the lease file."""

    def __init__(
        self,
        config: Config,
        store: Store,
        ledger: Ledger,
        helpers: Helpers | None,
        leases: Leases,
        emit_repair: RepairEmit,
    ) -> None:
        self.enabled = config.network_dns and helpers is not None
        self.plan = plan_of(config)
        self.store = store
        self.ledger = ledger
        self.helpers = helpers
        self.leases = leases
        self._emit_repair = emit_repair
        self._log = config.state_dir / "dnsmasq.log"
        self.running = False
        self._argv: list[str] = []
        self._next_check = 0.0

    def not_pooled(self) -> set[IPv4Address]:
        """Addresses the static pool leaves out: the host's, and the DHCP range (whether or not
        dnsmasq runs, so the address plan stays the same when network.dns is turned off)."""
        span = dnsmasq.dhcp_range(self.plan.subnet, self.plan.host_ip)
        return {self.plan.host_ip} | (span.addresses() if span is not None else set())

    def require_dhcp(self) -> None:
        """Unavailable unless a dnsmasq serves DHCP on the bridge (a dhcp-mode VM needs it)."""
        if not self.running:
            raise Unavailable(
                "network mode dhcp needs volantd's dnsmasq, which is not running",
                hint="set network.dns: true and install dnsmasq-base; see journalctl -u volantd",
                field="network.mode",
            )
        if dnsmasq.dhcp_range(self.plan.subnet, self.plan.host_ip) is None:
            raise Unavailable(
                f"network.subnet {self.plan.subnet} is too small for a DHCP range",
                field="network.mode",
            )

    @property
    def argv_file(self) -> Path:
        return self.plan.run_dir / "argv"

    async def start(self) -> None:
        """Adopt the dnsmasq that runs with today's command line, restart any other, start one
        when none runs; stop one that runs while DNS is off. Then release what no VM holds
        and follow the lease file. A dnsmasq that cannot start is logged, not fatal: guests
        in bridged mode need none."""
        if self.helpers is None:
            return
        if not self.enabled:
            if await self.helpers.running(HELPER):
                await self._repaired("removed", "network.dns is off")
            await self.ledger.remove(ResourceKind.DNSMASQ, UNIT, self._stop)
            return
        binary = shutil.which(dnsmasq.BINARY)
        if binary is None:
            log.warning("dnsmasq is not installed: no DHCP or DNS for guests (apt install "
                        "dnsmasq-base)")  # fmt: skip
            return
        argv = dnsmasq.command(self.plan, binary)
        try:
            await self.leases.write_files(await self.store.list_vms(), signal=False)
            await self._ensure(argv)
            self.running = True
            await self.repair()
        except (VolantError, OSError) as exc:
            log.error("dnsmasq: %s; guests get no DHCP or DNS", exc)
            if not self.running:
                return
        self._argv = argv
        self.leases.follow(self._reload, self._alive)

    async def close(self) -> None:
        """Stop following the lease file; dnsmasq keeps serving the guests."""
        await self.leases.close()
        if self.helpers is not None:
            await self.helpers.close()

    async def _ensure(self, argv: list[str]) -> None:
        assert self.helpers is not None
        records = {
            r.name for r in await self.store.list_resources() if r.kind is ResourceKind.DNSMASQ
        }
        running = await self.helpers.running(HELPER)
        if running and await asyncio.to_thread(_read, self.argv_file) == "\0".join(argv):
            if UNIT not in records:
                await self.ledger.adopt("", ResourceKind.DNSMASQ, UNIT)
                await self._repaired("adopted", "it had no record")
            log.info("dnsmasq: adopted the running one (%s)", self.helpers.kind)
            return
        if running:
            await self.ledger.remove(ResourceKind.DNSMASQ, UNIT, self._stop)
            await self._repaired("removed", "it ran with another configuration")
        await self.ledger.make(
            "", ResourceKind.DNSMASQ, UNIT, lambda: self._launch(argv), self._stop
        )
        log.info("dnsmasq: serving %s (%s)", self.plan.bridge, " ".join(argv[1:]))

    async def _alive(self) -> None:
        """Start dnsmasq again when it is gone (a crash without systemd to restart it, a kill
        by hand); checked every ALIVE_EVERY seconds."""
        assert self.helpers is not None
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + ALIVE_EVERY
        if not await self.helpers.running(HELPER):
            log.warning("dnsmasq is gone (see %s); starting it again", self._log)
            await self._ensure(self._argv)

    async def _launch(self, argv: list[str]) -> None:
        assert self.helpers is not None
        pid_file = self.plan.pid_file
        await asyncio.to_thread(_prepare, self.argv_file, "\0".join(argv), pid_file)
        await self.helpers.start(HELPER, argv, log_path=self._log)
        # dnsmasq writes its pid file once its signal handlers are in place: a SIGHUP (a hosts
        # change) before that would end it.
        async with asyncio.timeout(PID_WAIT):
            while not pid_file.exists():
                if not await self.helpers.running(HELPER):
                    raise Unavailable(f"dnsmasq exited at start; see {self._log}")
                await asyncio.sleep(0.1)

    async def _stop(self) -> None:
        assert self.helpers is not None
        await self.helpers.stop(HELPER)

    async def _reload(self) -> None:
        """SIGHUP: dnsmasq reads its hosts files again."""
        if self.helpers is not None and self.running:
            await self.helpers.signal(HELPER, signal.SIGHUP)

    async def release(self, vm: VirtualMachine) -> None:
        """Release the VM's DHCP lease (deleting it), as the guest would with DHCPRELEASE."""
        if not self.running:
            return
        for lease in await self.leases.read():
            if lease.mac == vm.mac.lower():
                await self._release(lease, vm.name)

    async def repair(self) -> None:
        """Release leases no VM holds any more (a delete cut short), and forget the lease
        records of VMs that are gone."""
        vms = await self.store.list_vms()
        macs = {vm.mac.lower(): vm.name for vm in vms}
        for lease in await self.leases.read():
            if lease.mac not in macs:
                await self._release(lease, "")
                await self._repaired("removed", "no VM of that MAC", name=lease.ip)
        names = {vm.name: vm for vm in vms}
        for record in await self.store.list_resources():
            if record.kind is ResourceKind.LEASE and record.vm not in names:
                await self.store.forget_resource(ResourceKind.LEASE, record.name)

    async def _release(self, lease: Lease, vm: str) -> None:
        argv = dnsmasq.release_command(self.plan.bridge, lease)
        log.info("dnsmasq: releasing %s of %s", lease.ip, vm or lease.mac, extra={"VM": vm})
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("cannot run %s: %s (apt install dnsmasq-utils)", argv[0], exc)
            return
        _, err = await proc.communicate()
        if proc.returncode != 0:
            log.error("%s failed: %s", argv[0], err.decode(errors="replace").strip())
            return
        # dhcp_release only sends a packet: wait until dnsmasq has dropped the lease.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELEASE_WAIT):
                for _ in itertools.count():
                    if all(x.mac != lease.mac for x in await self.leases.read()):
                        break
                    await asyncio.sleep(0.1)
        await self.store.forget_resource(ResourceKind.LEASE, lease.ip)

    async def _repaired(self, action: str, reason: str, *, name: str = UNIT) -> None:
        kind = ResourceKind.LEASE if name != UNIT else ResourceKind.DNSMASQ
        log.warning("repair: %s %s %s (%s)", action, kind, name, reason)
        payload = {"kind": kind.value, "name": name, "action": action, "reason": reason}
        await self._emit_repair("", payload)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _prepare(argv_file: Path, argv: str, pid_file: Path) -> None:
    argv_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.unlink(missing_ok=True)
    argv_file.write_text(argv)
