"""Bounded downloads against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from volant.model import DownloadFailed, ErrorCode, InvalidArgument
from volant.plugins.fetch import check_url, display_url, fetch_bytes, fetch_to_file

pytestmark = pytest.mark.unit

BLOB = bytes(range(256)) * 1024  # 256 KiB: more than one network chunk
LIMIT = 1024 * 1024
Serve = Callable[[web.Application], Awaitable[TestServer]]


async def _blob(_: web.Request) -> web.Response:
    return web.Response(body=BLOB)


async def _chunked(request: web.Request) -> web.StreamResponse:
    # No Content-Length at all: only counting the bytes as they arrive can stop this one.
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(int(request.query.get("n", "8"))):
        await resp.write(b"x" * 65536)
    await resp.write_eof()
    return resp


async def _stall(_: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(body=b"late")


async def _stall_body(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": "10"})
    await resp.prepare(request)
    await resp.write(b"12345")
    await asyncio.sleep(30)
    return resp


async def _missing(_: web.Request) -> web.Response:
    return web.Response(status=404, text="nothing here")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query.get("to", "/blob"))


@pytest.fixture
async def base(aiohttp_server: Serve) -> str:
    app = web.Application()
    app.router.add_get("/blob", _blob)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/stall", _stall)
    app.router.add_get("/stall-body", _stall_body)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/redirect", _redirect)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_fetch_bytes(base: str) -> None:
    assert await fetch_bytes(f"{base}/blob", max_bytes=LIMIT, timeout=5) == BLOB
    assert await fetch_bytes(f"{base}/redirect", max_bytes=LIMIT, timeout=5) == BLOB
    assert await fetch_bytes(f"{base}/chunked?n=2", max_bytes=LIMIT, timeout=5) == b"x" * 131072


async def test_fetch_to_file_hashes_and_renames(base: str, tmp_path: Path) -> None:
    dest = tmp_path / "blob.img"
    digest = await fetch_to_file(f"{base}/blob", dest, max_bytes=LIMIT, timeout=5)
    assert digest == "sha256:" + hashlib.sha256(BLOB).hexdigest()
    assert dest.read_bytes() == BLOB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.img"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://127.0.0.1/x", "scheme ftp is not allowed"),
        ("file:///etc/passwd", "scheme file is not allowed"),
        ("127.0.0.1/x", "scheme (none) is not allowed"),
        ("http://user:hunter2@127.0.0.1/x", "must not carry a user name or password"),
        ("http://token@127.0.0.1/x", "must not carry a user name or password"),
        ("http:///x", "names no host"),
        ("http://127.0.0.1:99999/x", "not a valid URL"),
    ],
)
async def test_refused_urls(url: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await fetch_bytes(url, max_bytes=LIMIT, timeout=5)
    assert words in caught.value.message
    assert caught.value.field == "url"
    assert "hunter2" not in caught.value.message
    with pytest.raises(InvalidArgument, match="url: "):
        await fetch_to_file(url, tmp_path / "x", max_bytes=LIMIT, timeout=5)
    assert list(tmp_path.iterdir()) == []


async def test_size_limit_from_the_header(base: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=rf"/blob is larger than {len(BLOB) - 1} bytes"):
        await fetch_bytes(f"{base}/blob", max_bytes=len(BLOB) - 1, timeout=5)
    assert await fetch_bytes(f"{base}/blob", max_bytes=len(BLOB), timeout=5) == BLOB


async def test_size_limit_while_streaming(base: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="larger than 100000 bytes") as caught:
        await fetch_bytes(f"{base}/chunked", max_bytes=100_000, timeout=5)
    assert caught.value.field == "url"
    dest = tmp_path / "big.img"
    dest.write_bytes(b"previous")
    with pytest.raises(InvalidArgument, match="larger than"):
        await fetch_to_file(f"{base}/chunked?n=200", dest, max_bytes=LIMIT, timeout=5)
    # The old file stays, and no partial download is left beside it.
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["big.img"]


@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
async def test_total_timeout(base: str, path: str, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DownloadFailed, match=r"no complete answer within 0.3 s") as caught:
        await fetch_to_file(f"{base}{path}", tmp_path / "x", max_bytes=LIMIT, timeout=0.3)
    assert loop.time() - started < 1.5
    assert caught.value.code is ErrorCode.DOWNLOAD_FAILED
    assert caught.value.wire.http_status == 502
    assert list(tmp_path.iterdir()) == []


async def test_http_errors_are_download_failures(base: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match=r"GET .*/missing\?…: HTTP 404 Not Found") as caught:
        await fetch_to_file(
            f"{base}/missing?token=s3cret", tmp_path / "x", max_bytes=LIMIT, timeout=5
        )
    assert "s3cret" not in caught.value.message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadFailed, match="redirected to an unusable URL"):
        await fetch_bytes(f"{base}/redirect?to=file:///etc/passwd", max_bytes=LIMIT, timeout=5)


async def test_connection_refused_is_a_download_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(DownloadFailed, match="cannot connect"):
            await fetch_bytes(f"http://127.0.0.1:{port}/x", max_bytes=LIMIT, timeout=5)


def test_display_url_hides_secrets() -> None:
    assert display_url("https://u:p@h.example:8443/a/b?sig=1#f") == "https://h.example:8443/a/b?…"
    assert display_url("http://[::1]/x") == "http://[::1]/x"
    check_url("https://h.example/a")
