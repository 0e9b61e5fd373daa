"""A command running in a VM's workload, as the daemon's exec WebSocket serves it.

Protocol (volant/api/rest/exec.py): the first client message is the command as JSON text;
binary frames from the daemon start with a stream byte (1 stdout, 2 stderr); its last text
frame is {"type": "exit", ...} or {"type": "error", ...problem}.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp

from volant.client.errors import ApiError, problem

STREAMS = {1: "stdout", 2: "stderr"}


class ExecStream:
    """A started command: `receive` its output, `send` it input, `resize` its pty."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.end: dict[str, Any] | None = None
        """{"exit_code", "signal", "timed_out", "error"} once the command has ended."""

    async def start(self, command: dict[str, Any]) -> None:
        await self._ws.send_str(json.dumps(command))

    async def receive(self) -> tuple[str, bytes] | None:
        """The next output chunk (stream name, bytes); None at the end (`end` says how, or is
        None when the connection broke). ApiError when the command could not start."""
        while self.end is None:
            message = await self._ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                data = bytes(message.data)
                if data and data[0] in STREAMS:
                    return STREAMS[data[0]], data[1:]
            elif message.type is aiohttp.WSMsgType.TEXT:
                doc = json.loads(message.data)
                if doc.get("type") == "error":
                    raise problem(int(doc.get("status") or 500), message.data)
                if doc.get("type") == "exit":
                    self.end = doc
            else:
                if self.end is None and message.type is aiohttp.WSMsgType.CLOSE:
                    raise ApiError(0, "BadResponse", "volantd ended the exec without its end")
                return None
        return None

    async def _send_text(self, doc: dict[str, Any]) -> None:
        if not self._ws.closed:
            with contextlib.suppress(ConnectionResetError):
                await self._ws.send_str(json.dumps(doc))

    async def send(self, data: bytes) -> None:
        """Input for the command; dropped once it has ended."""
        if data and not self._ws.closed:
            with contextlib.suppress(ConnectionResetError):
                await self._ws.send_bytes(data)

    async def close_stdin(self) -> None:
        await self._send_text({"type": "eof"})

    async def resize(self, rows: int, cols: int) -> None:
        await self._send_text({"type": "resize", "rows": rows, "cols": cols})

    async def signal(self, name: str) -> None:
        await self._send_text({"type": "signal", "signal": name})
