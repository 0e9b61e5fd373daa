"""`<ANY METHOD> /v1/proxy/<path>`: the workload's own HTTP and WebSocket endpoints, for the host.

Unlike the action routes (whole bodies, 1 MiB), this one streams: the agent rewrites the request
head (hop-by-hop headers and the agent secret dropped, Host set to the workload's base_url,
`Connection: close`) and from then on copies bytes. The request body goes up as the host sends it
(Content-Length or chunked: the framing headers are kept and the bytes relayed untouched), and
the answer comes down as the workload writes it, so a chunked or event stream arrives piece by
piece. A `101 Switching Protocols` (a WebSocket handshake) is relayed like any answer; after it,
both directions are raw bytes until either side closes.

Errors of the passthrough itself (no base_url, workload unreachable or silent) are JSON
`{"error": …}` with the X-Volant-Proxy-Error header, so the host can tell them from the
workload's own 404s and 502s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import SplitResult, urlsplit

from volant_agent.http import MAX_HEAD, HTTPError, Request, Response, encode_head, error_response

PREFIX = "/v1/proxy"
PROXY_ERROR_HEADER = "X-Volant-Proxy-Error"
CONNECT_TIMEOUT = 10.0
# How long the workload may take to start answering (long polls included); the body then
# streams with no deadline.
FIRST_BYTE_TIMEOUT = 300.0
# Once the host's side has closed, how long the rest of the workload's answer may take.
DRAIN = 30.0
CHUNK = 64 * 1024
# One hop's headers, and the host's word to this agent: never the workload's business. The
# framing headers (Content-Length, Transfer-Encoding) stay, since the body goes through as is.
DROP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
     "proxy-authorization", "proxy-authenticate", "host", "x-volant-agent-secret"}
)  # fmt: skip


def streams_body(path: str) -> bool:
    """True for the passthrough's paths: their request bodies stream (see http.read_request)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _error(status: int, message: str) -> Response:
    response = error_response(status, message)
    response.headers[PROXY_ERROR_HEADER] = "1"
    return response


def _error_bytes(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode() + b"\n"
    headers = {"Content-Type": "application/json", PROXY_ERROR_HEADER: "1"}
    return encode_head(status, headers, len(body)) + body


def request_head(request: Request, base: SplitResult) -> bytes:
    """The head sent to the workload: base_url's path + the path after /v1/proxy, query kept."""
    path = request.path[len(PREFIX) :] or "/"
    target = base.path.rstrip("/") + path + (f"?{request.query}" if request.query else "")
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    upgrade = "upgrade" in tokens and "upgrade" in request.headers
    drop = DROP | (tokens - {"content-length", "transfer-encoding"})
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {base.netloc}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k not in drop]
    if upgrade:
        lines += ["Connection: Upgrade", f"Upgrade: {request.headers['upgrade']}"]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_head(raw: bytes) -> tuple[int, bytes]:
    """(status, head for the host): hop-by-hop headers dropped, repeated ones (Set-Cookie)
    kept in order; `Connection: close`, or `Connection: Upgrade` after a 101."""
    lines = raw.decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 2 or not start[0].startswith("HTTP/1.") or not start[1].isdigit():
        raise HTTPError(502, "the workload's answer is not HTTP/1.x")
    status = int(start[1])
    out = [f"HTTP/1.1 {status} {start[2] if len(start) > 2 else ''}".rstrip()]
    upgrade = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if name.strip().lower() == "upgrade":
            upgrade = value.strip()
        if name.strip().lower() not in DROP:
            out.append(line)
    if status == 101:
        out += ["Connection: Upgrade", f"Upgrade: {upgrade}"]
    else:
        out.append("Connection: close")
    return status, ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


async def passthrough(base_url: str | None, request: Request) -> Response:
    """Connect to the workload; the relay then takes the host's connection over."""
    if not base_url:
        return _error(404, "the manifest declares no workload base_url")
    base = urlsplit(base_url)
    if base.scheme != "http" or not base.hostname:
        return _error(502, f"the workload's base_url {base_url!r} is not http://host[:port]")
    try:
        upstream = await asyncio.wait_for(
            asyncio.open_connection(base.hostname, base.port or 80, limit=MAX_HEAD),
            CONNECT_TIMEOUT,
        )
    except TimeoutError:
        return _error(504, "the workload did not accept a connection in time")
    except OSError as exc:
        return _error(502, f"the workload is unreachable: {exc}")
    head = request_head(request, base)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _relay(head, upstream, reader, writer)

    return Response(takeover=relay)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, eof: bool) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()
    if eof and dst.can_write_eof():
        dst.write_eof()  # a half-close: the peer may still answer (a WebSocket's close)


async def _answer_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The workload's final answer head; interim 1xx answers (100 Continue, 103 Early Hints)
    go to the host as they come, ahead of it. A 101 is final: the bytes after it are spliced."""
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        status, head = response_head(raw)
        if status >= 200 or status == 101:
            return head
        writer.write(raw)
        await writer.drain()


async def _relay(
    head: bytes,
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    up_reader, up_writer = upstream
    tasks: set[asyncio.Task[None]] = set()
    try:
        up_writer.write(head)
        await up_writer.drain()
        up = asyncio.create_task(_pump(reader, up_writer, eof=True))
        tasks.add(up)
        try:
            answer = await asyncio.wait_for(_answer_head(up_reader, writer), FIRST_BYTE_TIMEOUT)
        except TimeoutError:
            writer.write(_error_bytes(504, "the workload did not answer in time"))
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            writer.write(_error_bytes(502, f"the workload's answer broke off: {exc!r}"))
            return
        except HTTPError as exc:
            writer.write(_error_bytes(exc.status, str(exc)))
            return
        writer.write(answer)
        await writer.drain()
        down = asyncio.create_task(_pump(up_reader, writer, eof=False))
        tasks.add(down)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if down not in done:  # the host's side ended first: let the answer finish, briefly
            await asyncio.wait({down}, timeout=DRAIN)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        up_writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await up_writer.wait_closed()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
