"""Short-lived QMP sessions on QEMU's monitor socket.

QEMU's socket chardev serves one client at a time and leaves the next one waiting in the listen
backlog without a greeting, so every session here is bounded by a timeout and always disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient, QMPError, Runstate

log = logging.getLogger(__name__)


class QMPGone(Exception):
    """Nothing listens on the socket any more: the QEMU process has ended."""


class QMPBusy(Exception):
    """The socket exists but gave no greeting in time (hung, or another client holds it)."""


class QMPSession:
    """One negotiated QMP connection."""

    def __init__(self, client: QMPClient) -> None:
        self._client = client

    @property
    def version(self) -> str:
        greeting = self._client.greeting
        if greeting is None:
            return ""
        qemu = greeting.QMP.version.get("qemu")
        if not isinstance(qemu, dict):
            return ""
        return f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')}"

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one command; raises qemu.qmp's ExecuteError or ExecInterruptedError."""
        return await self._client.execute(command, arguments)

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def wait_closed(self, timeout: float) -> bool:
        """True once QEMU closed the connection (it does so only when it exits)."""

        async def closed() -> None:
            while self._client.runstate == Runstate.RUNNING:
                await self._client.runstate_changed()

        try:
            await asyncio.wait_for(closed(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True


def _gone(exc: ConnectError) -> bool:
    cause = exc.exc
    return isinstance(cause, FileNotFoundError | ConnectionRefusedError | EOFError)


@contextlib.asynccontextmanager
async def qmp_session(path: Path, name: str, timeout: float) -> AsyncIterator[QMPSession]:
    """Connect, negotiate capabilities and yield a session; disconnect on the way out.

    Raises QMPGone when no QEMU listens on path, QMPBusy when none answers within timeout.
    """
    client = QMPClient(name)
    try:
        try:
            await asyncio.wait_for(client.connect(str(path)), timeout)
        except TimeoutError as exc:
            raise QMPBusy(f"no QMP greeting on {path} within {timeout:.1f}s") from exc
        except ConnectError as exc:
            if _gone(exc):
                raise QMPGone(f"nothing listens on {path}: {exc.exc}") from exc
            raise QMPBusy(f"cannot connect to QMP on {path}: {exc}") from exc
        yield QMPSession(client)
    finally:
        if client.runstate != Runstate.IDLE:
            # disconnect() re-raises whatever ended the connection (EOFError when QEMU exits
            # mid-session); that is an expected outcome here, not an error.
            try:
                await client.disconnect()
            except (QMPError, OSError, EOFError) as exc:
                log.debug("QMP %s: connection ended with %r", path, exc)
