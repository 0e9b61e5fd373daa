"""A small HTTP/1.1 server and client on asyncio streams (the guest has no third-party packages).

One request per connection (`Connection: close`): the agent's callers are a host daemon and
curl, so keep-alive buys little and bounding work per connection stays simple. Every read has a
size bound and a deadline, so a slow or hostile peer holds a connection for seconds, not forever.

Two ways out of that for routes that stream: a route whose path `streams` (a predicate given to
connection_handler) gets its request with the body still unread on `Request.reader` (any size,
chunked too), and a Response with `takeover` is handed the raw connection instead of being
written: it writes its own head and then any bytes it likes (an HTTP passthrough, an upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
# Headers that describe one hop, not the message: never forwarded by the proxy.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authorization", "proxy-authenticate", "content-length", "host"}
)  # fmt: skip


class HTTPError(Exception):
    """A request that cannot be served; status and message go back to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    # The connection, body unread, for a route that streams its request body itself.
    reader: asyncio.StreamReader | None = field(default=None, repr=False, compare=False)


Takeover = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # A streaming response writes its body itself (Server-Sent Events); status and headers first.
    stream: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None
    # The whole connection, head included, belongs to this callable (see the module docstring).
    takeover: Takeover | None = None


def json_response(payload: object, status: int = 200) -> Response:
    body = json.dumps(payload, sort_keys=True).encode() + b"\n"
    return Response(status, body, {"Content-Type": "application/json"})


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


Handler = Callable[[Request], Awaitable[Response]]


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
    except asyncio.LimitOverrunError as exc:
        raise HTTPError(431, "request head too large") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("peer closed before a full request head") from exc


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Start line and headers (names folded to lower case) of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        raise HTTPError(400, "malformed start line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return first[0], first[1], first[2] if len(first) > 2 else "", headers


async def read_request(
    reader: asyncio.StreamReader, streams: Callable[[str], bool] = lambda _path: False
) -> Request:
    method, target, version, headers = parse_head(await _read_head(reader))
    if not version.startswith("HTTP/1."):
        raise HTTPError(505, "only HTTP/1.x is served")
    url = urlsplit(target)
    if streams(url.path):
        return Request(method.upper(), target, url.path, url.query, headers, b"", reader)
    if "transfer-encoding" in headers:
        raise HTTPError(411, "chunked request bodies are not accepted; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise HTTPError(400, "bad Content-Length") from exc
    if length < 0 or length > MAX_BODY:
        raise HTTPError(413, f"request body over {MAX_BODY} bytes")
    try:
        body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise HTTPError(400, "request body shorter than Content-Length") from exc
    return Request(method.upper(), target, url.path or "/", url.query, headers, body)


def encode_head(status: int, headers: Mapping[str, str], length: int | None) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in HOP_BY_HOP]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _respond(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: Request | None,
    resp: Response,
) -> None:
    if resp.takeover is not None:
        await resp.takeover(reader, writer)
        return
    if resp.stream is not None:
        writer.write(encode_head(resp.status, resp.headers, None))
        await writer.drain()
        await resp.stream(writer)
        return
    writer.write(encode_head(resp.status, resp.headers, len(resp.body)))
    if request is None or request.method != "HEAD":
        writer.write(resp.body)
    await writer.drain()


def connection_handler(
    handler: Handler, streams: Callable[[str], bool] = lambda _path: False
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap a request handler into an asyncio.start_server callback; requests whose path
    `streams` reach it with their body unread (Request.reader)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: Request | None = None
        try:
            try:
                request = await read_request(reader, streams)
                response = await handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, str(exc))
            except (TimeoutError, ConnectionError):
                return
            except Exception:
                log.exception("handler failed")
                response = error_response(500, "internal error")
            await _respond(reader, writer, request, response)
        except (ConnectionError, TimeoutError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    return serve


@dataclass(frozen=True)
class ClientResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def fetch(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> ClientResponse:
    """One HTTP/1.1 request to a plain-http URL; the whole exchange is bounded by timeout."""
    return await asyncio.wait_for(_fetch(method, url, body, headers or {}), timeout)


async def _fetch(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> ClientResponse:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in HOP_BY_HOP]
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        _version, status, _reason, resp_headers = parse_head(head)
        data = await reader.read(MAX_BODY + 1)
        while len(data) <= MAX_BODY and (more := await reader.read(MAX_BODY + 1 - len(data))):
            data += more
        if len(data) > MAX_BODY:
            raise ValueError("upstream response larger than 1 MiB")
        if resp_headers.get("transfer-encoding", "").lower() == "chunked":
            data = _dechunk(data)
        elif "content-length" in resp_headers:
            data = data[: int(resp_headers["content-length"])]
        return ClientResponse(int(status), resp_headers, data)
    finally:
        writer.close()
