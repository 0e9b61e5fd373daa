"""Bounded HTTP(S) downloads for plugin manifests and boot artifacts.

Every fetch has a byte limit and a total time limit, so a hostile or broken server cannot fill the
disk or hold an install open forever. Caller mistakes (a non-HTTP scheme, credentials in the URL,
a body over the limit) are InvalidArgument; the remote end failing is DownloadFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from volant.model import DownloadFailed, InvalidArgument

SCHEMES = ("http", "https")
CHUNK_BYTES = 256 * 1024
# Writes and hashing go to a thread in batches of this size: a hop per network chunk would
# spend more time switching threads than hashing.
FLUSH_BYTES = 4 * 1024 * 1024
MAX_REDIRECTS = 5


def display_url(url: str) -> str:
    """The URL for messages and logs: no credentials, query or fragment (they may hold tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


def check_url(url: str, *, field: str = "url") -> None:
    """Refuse what fetch_bytes/fetch_to_file would refuse, before any network traffic."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError as exc:
        raise InvalidArgument(
            f"{field}: {display_url(url)} is not a valid URL: {exc}", field=field
        ) from exc
    if parts.scheme.lower() not in SCHEMES:
        scheme = parts.scheme or "(none)"
        raise InvalidArgument(
            f"{field}: scheme {scheme} is not allowed; only http and https are", field=field
        )
    if "@" in parts.netloc:
        # Credentials in a manifest would be stored, logged and shown in `volar plugins list`.
        raise InvalidArgument(
            f"{field}: {display_url(url)} must not carry a user name or password", field=field
        )
    if not parts.hostname:
        raise InvalidArgument(f"{field}: {url!r} names no host", field=field)


async def fetch_bytes(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    session: aiohttp.ClientSession | None = None,
    field: str = "url",
) -> bytes:
    """GET url into memory; at most max_bytes, all within timeout seconds.

    field names the caller's input in InvalidArgument errors ("url", "initramfs.url", ...).
    """
    body = bytearray()

    async def keep(chunk: bytes) -> None:
        body.extend(chunk)

    await _download(url, keep, max_bytes=max_bytes, timeout=timeout, session=session, field=field)
    return bytes(body)


async def fetch_to_file(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
    session: aiohttp.ClientSession | None = None,
    field: str = "url",
) -> str:
    """GET url into dest and return "sha256:<hex>" of what was written.

    The body streams into a temporary file beside dest while it is hashed and is renamed onto
    dest only once complete, so dest is never a partial download; on any failure the temporary
    file is removed and dest is left as it was. field is as for fetch_bytes.
    """
    check_url(url, field=field)
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
    )
    part = Path(name)
    hasher = hashlib.sha256()
    pending = bytearray()

    async def spool(chunk: bytes) -> None:
        pending.extend(chunk)
        if len(pending) >= FLUSH_BYTES:
            await asyncio.to_thread(_write, out, hasher.update, bytes(pending))
            pending.clear()

    try:
        with os.fdopen(fd, "wb") as out:
            await _download(
                url, spool, max_bytes=max_bytes, timeout=timeout, session=session, field=field
            )
            await asyncio.to_thread(_finish, out, hasher.update, bytes(pending))
        await asyncio.to_thread(os.replace, part, dest)
    except BaseException:
        # On BaseException too: a cancelled install must not leave a .part file behind. Shielded,
        # because the thread finishes the unlink even if this await is cancelled again.
        await asyncio.shield(asyncio.to_thread(part.unlink, missing_ok=True))
        raise
    return "sha256:" + hasher.hexdigest()


def _write(out: IO[bytes], update: Callable[[bytes], object], data: bytes) -> None:
    update(data)
    out.write(data)


def _finish(out: IO[bytes], update: Callable[[bytes], object], data: bytes) -> None:
    _write(out, update, data)
    out.flush()
    # Without fsync a crash after the rename could leave a complete-looking name over a torn
    # file, and the artifact cache trusts names.
    os.fsync(out.fileno())


async def _download(
    url: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    max_bytes: int,
    timeout: float,
    session: aiohttp.ClientSession | None,
    field: str,
) -> None:
    """Feed the body of GET url to sink chunk by chunk, enforcing the size and time limits.

    The time limit covers the sink too: a download is done when its bytes are on disk.
    """
    check_url(url, field=field)
    shown = display_url(url)
    try:
        async with asyncio.timeout(timeout), _session(session) as client:
            await _stream(client, url, sink, max_bytes=max_bytes, timeout=timeout, field=field)
    except TimeoutError as exc:
        raise DownloadFailed(f"GET {shown}: no complete answer within {timeout:g} s") from exc
    except aiohttp.InvalidURL as exc:
        # Not the server's fault: the URL itself is unusable (aiohttp's parser is stricter).
        raise InvalidArgument(f"{field}: {_describe(exc)}", field=field) from exc
    except aiohttp.ClientError as exc:
        raise DownloadFailed(f"GET {shown}: {_describe(exc)}") from exc


async def _stream(
    client: aiohttp.ClientSession,
    url: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    max_bytes: int,
    timeout: float,
    field: str,
) -> None:
    shown = display_url(url)
    async with client.get(
        url,
        timeout=aiohttp.ClientTimeout(total=timeout),
        max_redirects=MAX_REDIRECTS,
        # The checksum pins the bytes the server stores, not a re-encoding of them; and a
        # compressed body would make the size limit count the wrong bytes.
        headers={"Accept-Encoding": "identity"},
        auto_decompress=False,
    ) as resp:
        if not 200 <= resp.status < 300:
            raise DownloadFailed(f"GET {shown}: HTTP {resp.status} {resp.reason or ''}".rstrip())
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise _too_large(shown, max_bytes, field)
        received = 0
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            received += len(chunk)
            # Content-Length may be absent or a lie; count what actually arrives.
            if received > max_bytes:
                raise _too_large(shown, max_bytes, field)
            await sink(chunk)


def _too_large(shown: str, max_bytes: int, field: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {shown} is larger than {max_bytes} bytes", field=field)


def _describe(exc: aiohttp.ClientError) -> str:
    # aiohttp's own text of these repeats the full URL, query and all.
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, aiohttp.RedirectClientError | aiohttp.InvalidURL):
        target = display_url(str(exc.args[0]) if exc.args else "")
        if isinstance(exc, aiohttp.RedirectClientError):
            return f"redirected to an unusable URL {target}"
        return f"unusable URL {target}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return str(exc) or type(exc).__name__


@contextlib.asynccontextmanager
async def _session(given: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if given is not None:
        yield given
        return
    async with aiohttp.ClientSession() as own:
        yield own
