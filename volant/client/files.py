"""The client side of /api/v1/vms/{name}/files: an upload from a file object, a download into one.

Both stream, with no time limit on the whole exchange (a large copy takes what it takes), only
on connecting and on each read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

import aiohttp

from volant.client.errors import bad_response, problem
from volant.client.http import VolantClient, _seg

TAR = "application/x-tar"
BLOCK = 1 << 16
IDLE = 120.0


@dataclass(frozen=True)
class Download:
    """What GET files answered: a file (its mode and mtime) or a directory's tar."""

    is_tar: bool
    mode: int
    mtime: float | None
    size: int


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=IDLE, sock_read=IDLE)


async def _chunks(source: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(source.read, BLOCK):
        yield chunk


async def upload(
    client: VolantClient,
    name: str,
    path: str,
    source: IO[bytes],
    length: int,
    *,
    tar: bool,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """PUT length bytes from source at path in VM name (a tar when tar); what was written."""
    url = client._url(f"/api/v1/vms/{_seg(name)}/files", {"path": path, **(query or {})})
    headers = {"Content-Type": TAR if tar else "application/octet-stream",
               "Content-Length": str(length)}  # fmt: skip
    try:
        async with client._session.put(
            url, data=_chunks(source), headers=headers, timeout=_timeout()
        ) as resp:
            body = await resp.read()
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise client._unreachable(exc) from exc
    if resp.status >= 400:
        raise problem(resp.status, body.decode(errors="replace"))
    try:
        done: dict[str, Any] = json.loads(body)
    except ValueError:
        raise bad_response(client.base, "PUT files answered no JSON") from None
    return done


async def download(client: VolantClient, name: str, path: str, sink: IO[bytes]) -> Download:
    """GET path from VM name into sink; what came (a file or a tar)."""
    url = client._url(f"/api/v1/vms/{_seg(name)}/files", {"path": path})
    size = 0
    try:
        async with client._session.get(url, timeout=_timeout()) as resp:
            if resp.status >= 400:
                raise problem(resp.status, await resp.text(errors="replace"))
            async for chunk in resp.content.iter_chunked(BLOCK):
                size += len(chunk)
                await asyncio.to_thread(sink.write, chunk)
            mode = int(resp.headers.get("X-Volant-File-Mode", "0644"), 8)
            mtime = resp.headers.get("X-Volant-File-Mtime")
            is_tar = resp.content_type == TAR
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise client._unreachable(exc) from exc
    except aiohttp.ClientPayloadError as exc:
        raise bad_response(client.base, f"the download of {path} broke off: {exc}") from exc
    return Download(is_tar, mode, float(mtime) if mtime else None, size)
