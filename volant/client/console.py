"""A VM's serial console as the daemon serves it: a WebSocket of raw bytes both ways."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import aiohttp

# How the daemon ends a console (its close code), in words for the one line volar prints.
DETACHED = 1000
VM_STOPPED = 4000
TAKEN_OVER = 4001
ABNORMAL = 1006
CLOSE_REASONS: Mapping[int, str] = {
    DETACHED: "detached",
    1001: "volantd is stopping",
    VM_STOPPED: "the VM stopped",
    TAKEN_OVER: "another client took the console over",
}


_ENDS = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)


class ConsoleStream:
    """An attached console: `receive` what the guest prints, `send` it input."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.close_code: int | None = None
        """How the daemon ended the console (1006 when the link broke); None while it has
        not (this side detaching leaves it None)."""
        self.close_reason = ""

    async def receive(self) -> bytes | None:
        """The next bytes from the guest; None once the console has ended."""
        while True:
            message = await self._ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                return bytes(message.data)
            if message.type is aiohttp.WSMsgType.TEXT:
                return str(message.data).encode()
            if message.type in _ENDS:
                # A CLOSE frame carries its own code; the socket's attribute may lag behind it.
                if message.type is aiohttp.WSMsgType.CLOSE:
                    self.close_code = int(message.data)
                    self.close_reason = str(message.extra or "")
                else:
                    self.close_code = self._ws.close_code or ABNORMAL
                return None

    async def send(self, data: bytes) -> None:
        """Input for the guest; dropped once the console has ended."""
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionResetError):  # the daemon closed it: receive() says why
            await self._ws.send_bytes(data)

    async def close(self) -> None:
        """Detach (close code 1000)."""
        await self._ws.close()

    def ending(self) -> str:
        """Why the console ended, in words."""
        code = self.close_code
        if code is not None and code in CLOSE_REASONS:
            return CLOSE_REASONS[code]
        return self.close_reason or f"connection to volantd lost (code {code})"
