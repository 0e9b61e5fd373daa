"""The daemon's own background duties under systemd: watchdog pings, STATUS= lines, and
powering guests off when the host (not just volantd) shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from volant.daemon.notify import Notifier
from volant.engine import Engine, Subscription
from volant.model import VirtualMachine

log = logging.getLogger("volantd")


def status_line(vms: list[VirtualMachine]) -> str:
    """ "3 VMs: 2 running, 1 stopped" (statuses by count, then name)."""
    counts = Counter(vm.status.value for vm in vms)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=_by_count))
    noun = "VM" if len(vms) == 1 else "VMs"
    return f"{len(vms)} {noun}: {parts}" if parts else f"0 {noun}"


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


@contextlib.asynccontextmanager
async def watchdog(notifier: Notifier) -> AsyncIterator[None]:
    """Ping systemd's watchdog at half of WatchdogSec= while inside (when it is on)."""
    interval = notifier.watchdog_interval()
    if interval is None:
        yield
        return
    log.info("watchdog on: pinging every %.1fs", interval)
    task = asyncio.create_task(_ping(notifier, interval), name="volantd-watchdog")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _ping(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def status_lines(engine: Engine, notifier: Notifier) -> AsyncIterator[None]:
    """Keep systemd's STATUS= at the VM counts, updated on every lifecycle event."""
    subscription = engine.bus.subscribe()
    notifier.status(status_line(await engine.list_vms()))
    task = asyncio.create_task(_follow(engine, notifier, subscription), name="volantd-status")
    try:
        yield
    finally:
        subscription.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _follow(engine: Engine, notifier: Notifier, subscription: Subscription) -> None:
    async for _event in subscription:
        try:
            notifier.status(status_line(await engine.list_vms()))
        except Exception:
            log.exception("could not update the service status")


async def stop(engine: Engine, notifier: Notifier) -> None:
    """On SIGTERM: leave VMs running, unless the host is shutting down; then power them off
    here, while their scopes wait (they are ordered Before=volantd.service, so systemd stops
    them only after volantd has exited) and before systemd would SIGTERM the hypervisors."""
    if not await engine.host_shutting_down():
        log.info("shutting down; VMs keep running")
        notifier.stopping()
        return
    log.info("host is shutting down: powering off every VM first")
    notifier.send("STOPPING=1", "STATUS=Host shutdown: powering off VMs")
    await engine.power_off_all()
