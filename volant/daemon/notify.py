"""sd_notify: READY=1, STATUS= and STOPPING=1 when systemd supervises volantd."""

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

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=Shutting down; VMs keep running")
