"""sd_notify: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 when systemd supervises volantd."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Notifier:
    """Talks to $NOTIFY_SOCKET when there is one; a no-op otherwise."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon

        if not daemon.notify("\n".join(lines)):
            log.warning("sd_notify failed: %s", lines)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when it is off."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not self.enabled or not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None  # meant for another process (we were started by a wrapper)
        return int(usec) / 2e6

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=Shutting down; VMs keep running")
