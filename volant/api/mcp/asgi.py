"""Serve one aiohttp request with an ASGI application (the MCP SDK's transport is ASGI).

The request body is read whole before the application runs, so aiohttp's body limit answers
an oversized request before the application sees any of it. An answer of declared length
(Content-Length) comes back as a plain `web.Response`, so the middlewares around the handler
(the OpenAPI check) still see and may replace it; any other answer (Server-Sent Events) is
streamed as it comes. As under an ASGI server, a client that leaves is heard as
`http.disconnect` (and as failing writes), never as a cancellation in the middle of the
application, even where aiohttp cancels the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# aiohttp frames the answer itself (length, chunking, keep-alive); these would contradict it.
HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})
# How often a stream checks that its client is still there while nothing is being written.
DISCONNECT_POLL = 0.5
# How long an application whose client left may take to finish before it is cancelled.
WIND_DOWN = 5.0


def scope_of(request: web.Request, extra: Mapping[str, Any]) -> Scope:
    """The ASGI HTTP connection scope of an aiohttp request."""
    raw_path, _, _ = request.raw_path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": raw_path.encode("latin-1"),
        "query_string": request.rel_url.raw_query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": _address(request, "peername"),
        "server": _address(request, "sockname"),
        "state": {},
        **extra,
    }


def _address(request: web.Request, which: str) -> tuple[str, int | None] | None:
    """(host, port) of a TCP end; (path, None) of a unix socket's, as ASGI servers give them."""
    transport = request.transport
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    value = transport.get_extra_info(which)
    if sock is not None and sock.family == socket.AF_UNIX:
        return (value or "", None) if isinstance(value, str) else None
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class Exchange:
    """One request/answer between aiohttp and an ASGI application: its `receive` and `send`."""

    def __init__(self, request: web.Request, body: bytes) -> None:
        self._request = request
        self._body: bytes | None = body
        self._finished = asyncio.Event()
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._buffer = bytearray()
        self._complete = False
        self._stream: web.StreamResponse | None = None

    async def receive(self) -> Message:
        """The body once, then `http.disconnect` when the client has gone or the answer is done."""
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        while not (self._finished.is_set() or self._client_gone()):
            try:
                await asyncio.wait_for(self._finished.wait(), DISCONNECT_POLL)
            except TimeoutError:
                continue
        return {"type": "http.disconnect"}

    def _client_gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(int(message["status"]), message.get("headers", ()))
        elif kind == "http.response.body":
            await self._body_part(bytes(message.get("body", b"")), message.get("more_body", False))
        else:
            raise RuntimeError(f"unsupported ASGI message {kind!r}")

    async def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Keep an answer of declared length for one `web.Response`; stream any other at once,
        so a client waiting on a quiet stream (SSE) has its headers without delay."""
        if self._status:
            raise RuntimeError("the ASGI application started its answer twice")
        self._status = status
        sized = False
        for name, value in headers:
            key = bytes(name).decode("latin-1")
            sized = sized or key.lower() == "content-length"
            if key.lower() not in HOP_BY_HOP:
                self._headers.add(key, bytes(value).decode("latin-1"))
        if not sized:
            self._stream = web.StreamResponse(status=status, headers=self._headers)
            await self._stream.prepare(self._request)

    async def _body_part(self, data: bytes, more: bool) -> None:
        if not self._status:
            raise RuntimeError("the ASGI application sent a body before starting its answer")
        if self._complete:
            raise RuntimeError("the ASGI application sent more after its last body part")
        self._complete = not more
        if self._stream is None:
            self._buffer += data
            return
        if data:
            await self._stream.write(data)  # raises ConnectionResetError once the client left
        if self._complete:
            await self._stream.write_eof()

    @property
    def streaming(self) -> bool:
        """Whether part of the answer has gone out (it can no longer be replaced)."""
        return self._stream is not None

    def close(self) -> None:
        """The application has returned: a `receive` still waiting hears `http.disconnect`."""
        self._finished.set()

    def answer(self) -> web.StreamResponse:
        """What the application answered, once it has returned."""
        if self._stream is not None:
            return self._stream
        if not self._status:
            raise RuntimeError("the ASGI application returned without answering")
        return web.Response(status=self._status, headers=self._headers, body=bytes(self._buffer))


async def serve_asgi(
    app: ASGIApp, request: web.Request, extra: Mapping[str, Any] | None = None
) -> web.StreamResponse:
    """Answer `request` with `app`; `extra` goes into the scope (how the app learns who called)."""
    body = await request.read()  # over the app's client_max_size: 413 before the app runs
    exchange = Exchange(request, body)
    task = asyncio.ensure_future(
        app(scope_of(request, extra or {}), exchange.receive, exchange.send)
    )
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # aiohttp cancels the handler of a client that left (handler_cancellation=True); an
        # ASGI application expects to hear http.disconnect instead and to wind down itself.
        exchange.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, WIND_DOWN)
        raise
    except Exception:
        if not exchange.streaming:
            raise
        # Half an answer is out and cannot become an error answer: end it where it stopped.
        log.warning("%s %s: stream ended early", request.method, request.path, exc_info=True)
    finally:
        exchange.close()
    return exchange.answer()
