"""System verbs: status (VMs, pool, host load) and info (version, configuration).

`SystemVerbs` is a base of `Engine`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass

from volant.config import Config
from volant.engine.events import EventBus
from volant.engine.ports import HypervisorDriver, Store, Supervisor
from volant.engine.telemetry import Telemetry
from volant.engine.vmdisks import VMDisks
from volant.host.stats import host_stats
from volant.model import HostStats, Usage, VirtualMachine, VMStatus

log = logging.getLogger("volant.engine.engine")


@dataclass(frozen=True)
class SystemStatus:
    version: str
    supervisor: str
    hypervisor: str
    vms_total: int
    vms_by_status: dict[str, int]
    ip_pool_subnet: str
    ip_pool_leased: int
    ip_pool_total: int
    event_subscribers: int
    usage: Usage
    host: HostStats


@dataclass(frozen=True)
class SystemInfo:
    version: str
    hostname: str
    kernel: str
    supervisor: str
    hypervisor: str
    accel: str
    state_dir: str
    bridge: str
    subnet: str
    host_ip: str
    plugins_require_signature: bool
    api_key_required: bool


class SystemVerbs:
    """What volantd and the host are doing; a base of Engine."""

    config: Config
    store: Store
    driver: HypervisorDriver
    supervisor: Supervisor
    bus: EventBus
    telemetry: Telemetry
    disks: VMDisks
    _version: str

    async def stop_vm(self, name: str) -> VirtualMachine:
        raise NotImplementedError  # Engine's verb

    async def host_shutting_down(self) -> bool:
        """True when the host itself is going down, not only this daemon."""
        return await self.supervisor.host_shutting_down()

    async def power_off_all(self) -> None:
        """Stop every running VM gracefully, all at once (the host is shutting down)."""
        running = [vm.name for vm in await self.store.list_vms() if vm.status == VMStatus.RUNNING]
        log.info("host shutdown: powering off %d VMs", len(running))
        results = await asyncio.gather(*map(self.stop_vm, running), return_exceptions=True)
        for name, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not power off VM %s: %s", name, result, extra={"VM": name})

    @property
    def version(self) -> str:
        return self._version

    async def system_status(self) -> SystemStatus:
        """VMs by status, their summed usage (disks of every VM, running or not), IP pool usage
        and the host's CPU, memory, load."""
        vms = await self.store.list_vms()
        usages = [await self.supervisor.usage(vm.name) for vm in vms if vm.status.is_active]
        usages += [await self.disks.usage(vm.name, Usage()) for vm in vms]
        leased, total = await self.store.pool_usage()
        return SystemStatus(
            version=self._version,
            supervisor=self.supervisor.kind,
            hypervisor=self.driver.kind,
            vms_total=len(vms),
            vms_by_status=_by_status(vms),
            ip_pool_subnet=self.config.network_subnet,
            ip_pool_leased=leased,
            ip_pool_total=total,
            event_subscribers=self.bus.subscriber_count,
            usage=_total(usages),
            host=await asyncio.to_thread(host_stats),
        )

    async def metrics(self) -> tuple[str, bytes]:
        """(content type, body) of the Prometheus text exposition of this engine.

        Only the counts it shows: a scrape asks no supervisor for usage and reads no host stats.
        """
        vms = await self.store.list_vms()
        leased, total = await self.store.pool_usage()
        body = self.telemetry.render(_by_status(vms), self.bus.subscriber_count, leased, total)
        return self.telemetry.content_type, body

    async def system_info(self) -> SystemInfo:
        """Version, host name and kernel, and the configuration callers need to know."""
        config = self.config
        return SystemInfo(
            version=self._version,
            hostname=socket.gethostname(),
            kernel=platform.release(),
            supervisor=self.supervisor.kind,
            hypervisor=self.driver.kind,
            accel=config.runtime_accel,
            state_dir=os.fspath(config.state_dir),
            bridge=config.network_bridge,
            subnet=config.network_subnet,
            host_ip=config.network_host_ip,
            plugins_require_signature=config.plugins_require_signature,
            api_key_required=bool(config.api_key),
        )


def _by_status(vms: list[VirtualMachine]) -> dict[str, int]:
    return dict(Counter(vm.status.value for vm in vms))


def _total(usages: list[Usage]) -> Usage:
    """Sum of the known values; None when no VM reported one."""
    cpu = [u.cpu_seconds for u in usages if u.cpu_seconds is not None]
    memory = [u.memory_bytes for u in usages if u.memory_bytes is not None]
    disk = [u.disk_bytes for u in usages if u.disk_bytes is not None]
    size = [u.disk_size_bytes for u in usages if u.disk_size_bytes is not None]
    return Usage(
        cpu_seconds=sum(cpu) if cpu else None,
        memory_bytes=sum(memory) if memory else None,
        disk_bytes=sum(disk) if disk else None,
        disk_size_bytes=sum(size) if size else None,
    )
