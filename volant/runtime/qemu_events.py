"""QEMU's own account of why it ended, heard on a second QMP monitor held open while it runs.

QEMU's monitor socket serves one client at a time, and volant's commands use short sessions on
spec.api_socket; a listener holding that socket would lock them out. So QEMU gets a second
monitor (EVENTS_SOCKET in the run dir) that only the listener uses. Before it exits QEMU sends
`SHUTDOWN {"guest": bool, "reason": ShutdownCause}` there, then closes the connection; a SIGKILL
or a crash closes it with nothing said. Reasons seen on QEMU 7.2 (reference B.2): a guest
power-off gives guest-shutdown; a guest reboot or triple fault under -no-reboot gives
guest-reset; a kernel panic reported through the pvpanic device gives guest-panic; `quit` gives
host-qmp-quit and SIGTERM host-signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError

from volant.model import EndCause, HypervisorEnd
from volant.runtime.qmp import QMPBusy, QMPGone, QMPSession, qmp_session

log = logging.getLogger(__name__)

EVENTS_SOCKET = "events.sock"
CONNECT_TIMEOUT = 2.0
RETRY_INTERVAL = 1.0

SHUTDOWN_CAUSES: Mapping[str, EndCause] = {
    "guest-shutdown": EndCause.GUEST_POWEROFF,
    "guest-reset": EndCause.GUEST_RESET,
    "guest-panic": EndCause.GUEST_PANIC,
    "host-qmp-quit": EndCause.HOST_REQUEST,
    "host-qmp-system-reset": EndCause.HOST_REQUEST,
    "host-signal": EndCause.HOST_REQUEST,
    "host-ui": EndCause.HOST_REQUEST,
}


def shutdown_end(data: Mapping[str, Any] | None) -> HypervisorEnd:
    """The end a SHUTDOWN event's data describes; UNKNOWN without one (or for host-error)."""
    if data is None:
        return HypervisorEnd()
    reason = str(data.get("reason", ""))
    return HypervisorEnd(SHUTDOWN_CAUSES.get(reason, EndCause.UNKNOWN), reason)


class ShutdownListener:
    """Holds QEMU's events monitor for as long as QEMU runs and keeps what SHUTDOWN said."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._shutdown: dict[str, Any] | None = None
        self._session: QMPSession | None = None
        self._running = False
        self._sessions = 0
        self._done = asyncio.Event()

    async def run(self) -> None:
        """Listen until QEMU has gone (its socket refuses or is missing); returns then."""
        self._running = True
        try:
            while self._shutdown is None and await self._listen_once():
                pass
        finally:
            self._done.set()

    async def _listen_once(self) -> bool:
        """One session until QEMU hangs up; False once no QEMU listens any more."""
        try:
            async with qmp_session(
                self.path, f"volant-{self.name}-events", CONNECT_TIMEOUT, listen_for=("SHUTDOWN",)
            ) as qmp:
                self._sessions += 1
                self._session = qmp
                await qmp.hung_up()
                heard = qmp.heard("SHUTDOWN")
        except QMPGone as exc:
            if self._sessions == 0:
                # A QEMU started by a volantd without this monitor, or one already gone.
                log.info("%s: no QEMU events monitor (%s); its end cannot be told", self.name, exc)
            return False
        except (QMPBusy, QMPError, OSError) as exc:
            log.debug("%s: QEMU events monitor: %s; trying again", self.name, exc)
            await asyncio.sleep(RETRY_INTERVAL)
            return True
        if heard:
            self._shutdown = heard[-1]
        return True  # hung up with nothing said: killed, or gone (the next connect tells)

    async def end(self, timeout: float) -> HypervisorEnd:
        """Why QEMU ended; waits up to timeout for the listener to drain what was in flight."""
        if not self._running:
            return HypervisorEnd()
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            log.warning("%s: QEMU events monitor still open %.1fs after exit", self.name, timeout)
            if self._shutdown is None and self._session is not None:
                heard = self._session.heard("SHUTDOWN")
                return shutdown_end(heard[-1] if heard else None)
        return shutdown_end(self._shutdown)
