"""Short-lived QMP sessions on QEMU's monitor socket.

QEMU's socket chardev serves one client at a time and leaves the next one waiting in the listen
backlog without a greeting, so every session here is bounded by a timeout and always disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Collection, Mapping
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
        """Run one command; raises qemu.qmp's ExecuteError or ExecInterruptedError, or QMPGone
        when QEMU had closed the session before it."""
        if self._client.runstate != Runstate.RUNNING:
            raise QMPGone(f"QEMU closed the QMP session before {command}")
        return await self._client.execute(command, arguments)

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def hung_up(self) -> None:
        """Return once QEMU closed the connection (it does so only when it exits)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    async def wait_closed(self, timeout: float) -> bool:
        """True once QEMU closed the connection within timeout seconds."""
        try:
            await asyncio.wait_for(self.hung_up(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    def heard(self, event: str) -> list[dict[str, Any]]:
        """The data of each `event` heard so far, oldest first (see qmp_session's listen_for)."""
        heard: list[dict[str, Any]] = []
        for message in self._client.events.history:
            data = message.get("data")
            if message.get("event") == event:
                heard.append(dict(data) if isinstance(data, Mapping) else {})
        return heard


async def _connect_unix(path: Path) -> socket.socket:
    # Connecting here rather than in QMPClient keeps the expected "not listening yet / any more"
    # outcomes out of qemu.qmp, which logs every failed connect at ERROR level.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise QMPGone(f"nothing listens on {path}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def qmp_session(
    path: Path, name: str, timeout: float, *, listen_for: Collection[str] = ()
) -> AsyncIterator[QMPSession]:
    """Connect, negotiate capabilities and yield a session; disconnect on the way out.

    The session keeps the events named in listen_for (QMPSession.heard); others are dropped, so
    a session held open for QEMU's whole life does not pile them up. Raises QMPGone when no QEMU
    listens on path, QMPBusy when none answers within timeout.
    """
    sock = await _connect_unix(path)
    client = QMPClient(name)
    wanted = frozenset(listen_for)
    client.events.event_filter = lambda event: event.get("event") in wanted
    try:
        try:
            # The client owns the socket from here on and closes it on disconnect.
            await asyncio.wait_for(client.connect(sock), timeout)
        except TimeoutError as exc:
            raise QMPBusy(f"no QMP greeting on {path} within {timeout:.1f}s") from exc
        except ConnectError as exc:
            if isinstance(exc.exc, EOFError | ConnectionResetError):
                raise QMPGone(f"QEMU closed {path} during the greeting") from exc
            raise QMPBusy(f"cannot set up QMP on {path}: {exc}") from exc
        except AssertionError:
            # connect() asserts that the session still runs as it returns; QEMU hanging up just
            # after the negotiation trips it. The session did happen (events it sent before
            # closing are kept): hand it over, already closed.
            if client.runstate != Runstate.DISCONNECTING:
                raise
        yield QMPSession(client)
    finally:
        if client.runstate != Runstate.IDLE:
            # disconnect() re-raises whatever ended the connection (EOFError when QEMU exits
            # mid-session); that is an expected outcome here, not an error.
            try:
                await client.disconnect()
            except (QMPError, OSError, EOFError) as exc:
                log.debug("QMP %s: connection ended with %r", path, exc)
        sock.close()
