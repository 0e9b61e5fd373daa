"""The host's end of the agent's exec route: `POST /v1/exec` with `Upgrade: volant-exec`.

aiohttp's client upgrades only to WebSockets, so this speaks the few lines of HTTP itself on a
plain connection (TCP to the guest, or the relay socket of a network-less VM), then the agent's
frames (agent/volant_agent/exec.py): a type byte, a 4-byte big-endian length, the payload.
What the agent refuses before the upgrade comes back as a VolantError: 400 as InvalidArgument
(naming user or workdir when it is about them), 409 as InvalidState.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Mapping
from typing import Any

from volant.model import AGENT_PORT, AgentEndpoint, InvalidArgument, InvalidState, Unavailable
from volant.model.execs import ExecEnd

UPGRADE = "volant-exec"
HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 20
MAX_HEAD = 16 * 1024
CONNECT_TIMEOUT = 5.0
SECRET_HEADER = "X-Volant-Agent-Secret"  # noqa: S105 - a header name, not a secret
STDOUT, STDERR = "stdout", "stderr"
_KINDS = {b"o": STDOUT, b"e": STDERR}


class ExecLink:
    """A running command in a guest: its output as it comes, input, resizes, signals."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.end: ExecEnd | None = None

    async def receive(self) -> tuple[str, bytes] | None:
        """The next output chunk ("stdout" or "stderr", bytes); None at the end, when `end`
        says how the command ended (None there too: the guest went away first)."""
        while self.end is None:
            try:
                kind, length = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                if length > MAX_FRAME:
                    raise ValueError(f"frame of {length} bytes")
                payload = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                return None
            if kind == b"x":
                try:
                    self.end = ExecEnd.from_dict(json.loads(payload))
                except (ValueError, AttributeError):
                    return None
                return None
            if kind in _KINDS:
                return _KINDS[kind], payload
        return None

    async def _send(self, kind: bytes, payload: bytes = b"") -> None:
        if self._writer.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            self._writer.write(HEADER.pack(kind, len(payload)) + payload)
            await self._writer.drain()

    async def send_stdin(self, data: bytes) -> None:
        """Input for the command; empty data is ignored (close_stdin ends it)."""
        for at in range(0, len(data), MAX_FRAME):
            await self._send(b"i", data[at : at + MAX_FRAME])

    async def close_stdin(self) -> None:
        await self._send(b"i")

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(b"r", json.dumps({"rows": rows, "cols": cols}).encode())

    async def signal(self, name: str) -> None:
        """Send signal name (INT, TERM, ...) to the command's process group."""
        await self._send(b"k", name.encode())

    async def close(self) -> None:
        """Hang up: a command still running is killed by the agent."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def _connect(
    agent: AgentEndpoint, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if agent.socket is not None:
        return await asyncio.open_unix_connection(str(agent.socket), limit=MAX_FRAME + 64)
    return await asyncio.open_connection(agent.address, port, limit=MAX_FRAME + 64)


def _refusal(status: int, body: bytes) -> Exception:
    try:
        message = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:200]
    if status == 400:
        field = next((f for f in ("user", "workdir", "env") if message.startswith(f)), "argv")
        return InvalidArgument(f"the guest refused the command: {message}", field=field)
    if status == 409:
        return InvalidState(f"the guest cannot run commands now: {message}")
    if status in (404, 426):
        return Unavailable(
            f"the guest agent has no exec route (HTTP {status})",
            hint="the VM runs an older agent: restart it after updating volant",
        )
    return Unavailable(f"the guest agent answered HTTP {status} to exec: {message}")


async def open_exec(
    agent: AgentEndpoint,
    request: Mapping[str, Any],
    *,
    port: int = AGENT_PORT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> ExecLink:
    """Start a command through the agent; raises VolantError when it cannot start."""
    where = f"unix:{agent.socket}" if agent.socket is not None else f"{agent.address}:{port}"
    body = json.dumps(dict(request)).encode()
    head = [
        "POST /v1/exec HTTP/1.1",
        "Host: agent",
        "Connection: Upgrade",
        f"Upgrade: {UPGRADE}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if agent.secret:
        head.append(f"{SECRET_HEADER}: {agent.secret}")
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await _connect(agent, port)
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise Unavailable(
            f"the guest agent at {where} did not answer: {reason}",
            hint="the guest may still be booting, or its agent has stopped; see its console log",
        ) from exc
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    if status != 101:
        reply = b""
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(connect_timeout):
                reply = await reader.read(MAX_HEAD)
        writer.close()
        raise _refusal(status, reply)
    return ExecLink(reader, writer)
