"""The host's CPU, memory and load, read through psutil (which reads /proc)."""

from __future__ import annotations

import os
import time

import psutil

from volant.model import HostStats


def host_stats() -> HostStats:
    """CPU busy since the previous call (0.0 on the first), memory, load and uptime."""
    memory = psutil.virtual_memory()
    one, five, fifteen = os.getloadavg()
    return HostStats(
        cpus=os.cpu_count() or 1,
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        load_average=(one, five, fifteen),
        memory_total_bytes=int(memory.total),
        memory_available_bytes=int(memory.available),
        uptime_seconds=max(0.0, time.time() - psutil.boot_time()),
    )
