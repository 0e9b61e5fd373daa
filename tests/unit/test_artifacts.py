"""The artifact cache: real files, and a real aiohttp server on 127.0.0.1 for downloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from volant.model import Artifact, DownloadFailed, InvalidArgument
from volant.plugins.artifacts import ArtifactCache, resolve

pytestmark = pytest.mark.unit

Serve = Callable[[web.Application], Awaitable[TestServer]]
FILES = {
    "/plugins/hello/hello.cpio": b"hello initramfs",
    "/plugins/hello/my image.cpio": b"spaced name",
    "/plugins/shared/base.cpio": b"shared base",
    "/slow.cpio": b"slow but steady",
}


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Origin:
    """The test server's base URL and how often each path was requested."""

    url: str
    hits: Counter[str]


@pytest.fixture
async def origin(aiohttp_server: Serve) -> Origin:
    hits: Counter[str] = Counter()

    async def serve(request: web.Request) -> web.Response:
        hits[request.path] += 1
        if request.path == "/slow.cpio":
            await asyncio.sleep(0.2)  # long enough for concurrent callers to pile up
        body = FILES.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server = await aiohttp_server(app)
    return Origin(str(server.make_url("")).rstrip("/"), hits)


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "artifacts", max_bytes=1024 * 1024, timeout=5)


def cached_names(cache: ArtifactCache, kind: str = "sha256") -> list[str]:
    folder = cache.root / kind
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_no_leftovers(cache: ArtifactCache) -> None:
    tmp = cache.root / "tmp"
    assert not tmp.is_dir() or list(tmp.iterdir()) == []


async def test_download_is_verified_and_cached_read_only(
    cache: ArtifactCache, origin: Origin
) -> None:
    body = FILES["/plugins/hello/hello.cpio"]
    art = Artifact(url=f"{origin.url}/plugins/hello/hello.cpio", checksum=checksum(body))
    path = await cache.ensure(art)
    assert path == cache.digest_path(art.checksum) == cache.root / "sha256" / art.checksum[7:]
    assert path.read_bytes() == body
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert_no_leftovers(cache)
    # A hit answers from the cache without asking the server again.
    assert await cache.ensure(art) == path
    assert origin.hits["/plugins/hello/hello.cpio"] == 1


async def test_host_file_is_copied_once(cache: ArtifactCache, tmp_path: Path) -> None:
    source = tmp_path / "boot.cpio"
    source.write_bytes(b"from the host")
    art = Artifact(path=str(source), checksum=checksum(b"from the host"))
    path = await cache.ensure(art, field="kernel")
    source.unlink()
    assert await cache.ensure(art, field="kernel") == path
    assert path.read_bytes() == b"from the host"


async def test_concurrent_ensure_downloads_once(cache: ArtifactCache, origin: Origin) -> None:
    art = Artifact(url=f"{origin.url}/slow.cpio", checksum=checksum(FILES["/slow.cpio"]))
    paths = await asyncio.gather(*(cache.ensure(art) for _ in range(5)))
    assert len(set(paths)) == 1
    assert origin.hits["/slow.cpio"] == 1
    assert cached_names(cache) == [art.checksum[7:]]
    assert cache._gates == {}  # locks are dropped once nobody needs them


async def test_checksum_mismatch_caches_nothing(
    cache: ArtifactCache, origin: Origin, tmp_path: Path
) -> None:
    wrong = checksum(b"something else")
    body = FILES["/plugins/hello/hello.cpio"]
    source = tmp_path / "local.cpio"
    source.write_bytes(body)
    for art in (
        Artifact(url=f"{origin.url}/plugins/hello/hello.cpio?sig=s3cret", checksum=wrong),
        Artifact(path=str(source), checksum=wrong),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await cache.ensure(art)
        assert caught.value.field == "initramfs.checksum"
        assert f"expected {wrong}, got {checksum(body)}" in caught.value.message
        assert "s3cret" not in caught.value.message
        assert cached_names(cache) == []
        assert_no_leftovers(cache)


async def test_download_failure_caches_nothing(cache: ArtifactCache, origin: Origin) -> None:
    art = Artifact(url=f"{origin.url}/nope.cpio", checksum=checksum(b"x"))
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        await cache.ensure(art)
    assert cached_names(cache) == []
    assert_no_leftovers(cache)


async def test_download_limit_names_the_field(origin: Origin, tmp_path: Path) -> None:
    small = ArtifactCache(tmp_path / "artifacts", max_bytes=4, timeout=5)
    body = FILES["/plugins/hello/hello.cpio"]
    art = Artifact(url=f"{origin.url}/plugins/hello/hello.cpio", checksum=checksum(body))
    with pytest.raises(InvalidArgument, match=r"^kernel\.url: .* is larger than 4 bytes") as caught:
        await small.ensure(art, field="kernel")
    assert caught.value.field == "kernel.url"
    assert cached_names(small) == []
    assert_no_leftovers(small)


@pytest.mark.parametrize(
    ("ref", "served"),
    [
        ("hello.cpio", "/plugins/hello/hello.cpio"),
        ("../shared/base.cpio", "/plugins/shared/base.cpio"),
        ("my image.cpio", "/plugins/hello/my image.cpio"),
    ],
)
async def test_relative_path_against_a_url(
    cache: ArtifactCache, origin: Origin, ref: str, served: str
) -> None:
    base = f"{origin.url}/plugins/hello/manifest.json?token=abc"
    art = Artifact(path=ref, checksum=checksum(FILES[served]))
    path = await cache.ensure(art, base=base)
    assert path.read_bytes() == FILES[served]
    assert origin.hits[served] == 1


async def test_relative_path_against_a_file(cache: ArtifactCache, tmp_path: Path) -> None:
    plugin = tmp_path / "plug ins" / "hello"
    plugin.mkdir(parents=True)
    (plugin / "hello.cpio").write_bytes(b"beside the manifest")
    (tmp_path / "plug ins" / "up.cpio").write_bytes(b"one level up")
    manifest = plugin / "manifest.json"
    for base in (manifest.as_uri(), str(manifest)):
        for ref, body in (("hello.cpio", b"beside the manifest"), ("../up.cpio", b"one level up")):
            art = Artifact(path=ref, checksum=checksum(body))
            assert (await cache.ensure(art, base=base)).read_bytes() == body
            await cache.prune(set())


def test_resolve(tmp_path: Path) -> None:
    def art(**kw: str) -> Artifact:
        return Artifact(checksum=checksum(b""), **kw)

    web_base = "https://h.example/p/hello/manifest.json"
    assert resolve(art(path="/abs/k"), base="/m/manifest.json", field="kernel") == Path("/abs/k")
    with pytest.raises(InvalidArgument, match="may not name a host file"):
        resolve(art(path="/etc/shadow"), base=web_base, field="kernel")
    assert (
        resolve(art(path="a?b#c"), base=web_base, field="f")
        == "https://h.example/p/hello/a%3Fb%23c"
    )
    assert (
        resolve(art(url="x.cpio"), base=web_base, field="f") == "https://h.example/p/hello/x.cpio"
    )
    assert resolve(art(url="x.cpio"), base="/m/manifest.json", field="f") == Path("/m/x.cpio")
    assert resolve(art(url="https://o/x"), base="", field="f") == "https://o/x"
    for bad, words in [
        (
            art(path="x.cpio"),
            "initramfs.path: relative artifact path needs the manifest's location",
        ),
        (art(url="ftp://o/x"), "initramfs.url: scheme ftp is not allowed"),
        (art(url="file:///etc/passwd"), "initramfs.url: scheme file is not allowed"),
        (art(), "initramfs: needs exactly one of url or path"),
        (art(url="https://o/x", path="/x"), "needs exactly one"),
        (art(path="a\x00b"), "NUL"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            resolve(bad, base="", field="initramfs")
        assert words in caught.value.message
    with pytest.raises(InvalidArgument, match="must be an http"):
        resolve(art(path="x"), base="ftp://h/m.json", field="initramfs")
    with pytest.raises(InvalidArgument, match="must be an http"):
        resolve(art(path="x"), base="relative/m.json", field="initramfs")


async def test_bad_checksums_and_sources(cache: ArtifactCache, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"kernel\.checksum: is required") as caught:
        await cache.ensure(Artifact(path="/boot/vmlinuz"), field="kernel")
    assert caught.value.field == "kernel.checksum"
    with pytest.raises(InvalidArgument, match="64 hex digits"):
        cache.digest_path("sha256:ABC")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (cache.max_bytes + 1))
    for source, words in [
        (fifo, "not a regular file"),
        (tmp_path, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path / "absent", "does not exist"),
        (big, f"larger than {cache.max_bytes} bytes"),
    ]:
        with pytest.raises(InvalidArgument, match=words) as caught:
            await cache.ensure(Artifact(path=str(source), checksum=checksum(b"")))
        assert caught.value.field == "initramfs.path"
    assert cached_names(cache) == []
    assert_no_leftovers(cache)


async def test_concatenated_pads_and_caches(cache: ArtifactCache, tmp_path: Path) -> None:
    first, second = tmp_path / "base.cpio", tmp_path / "plugin.cpio"
    first.write_bytes(b"12345")
    second.write_bytes(b"abc")
    combined = await cache.concatenated(first, second)
    assert combined.read_bytes() == b"12345\0\0\0abc"
    key = hashlib.sha256((checksum(b"12345") + checksum(b"abc")).encode()).hexdigest()
    assert combined == cache.root / "combined" / key
    assert stat.S_IMODE(combined.stat().st_mode) == 0o444
    assert await cache.concatenated(first, second) == combined
    aligned = tmp_path / "aligned.cpio"
    aligned.write_bytes(b"12345678")
    assert (await cache.concatenated(aligned, second)).read_bytes() == b"12345678abc"
    assert_no_leftovers(cache)


async def test_digests_are_memoised_by_stat(cache: ArtifactCache, tmp_path: Path) -> None:
    first, second = tmp_path / "base.cpio", tmp_path / "plugin.cpio"
    first.write_bytes(b"1234")
    second.write_bytes(b"abc")
    combined = await cache.concatenated(first, second)
    # Same size and mtime: the memo answers, so the content is not read again.
    st = first.stat()
    first.write_bytes(b"WXYZ")
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert await cache.file_digest(first) == checksum(b"1234")
    assert await cache.concatenated(first, second) == combined
    # Were the combined file gone, the stale memo must not file new bytes under the old name.
    await cache.prune(set())
    rebuilt = await cache.concatenated(first, second)
    assert rebuilt.read_bytes() == b"WXYZabc"
    key = hashlib.sha256((checksum(b"WXYZ") + checksum(b"abc")).encode()).hexdigest()
    assert rebuilt.name == key
    # A new mtime is a new memo key.
    first.write_bytes(b"1234")
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (await cache.concatenated(first, second)).read_bytes() == b"1234abc"


async def test_cached_artifacts_are_not_rehashed(cache: ArtifactCache, tmp_path: Path) -> None:
    source = tmp_path / "k"
    source.write_bytes(b"kernel")
    path = await cache.ensure(Artifact(path=str(source), checksum=checksum(b"kernel")))
    # The name of a cache entry is its digest; no need to read it.
    assert await cache.file_digest(path) == checksum(b"kernel")


async def test_prune(cache: ArtifactCache, tmp_path: Path) -> None:
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    kept.write_bytes(b"keep me")
    dropped.write_bytes(b"drop me")
    keep = await cache.ensure(Artifact(path=str(kept), checksum=checksum(b"keep me")))
    drop = await cache.ensure(Artifact(path=str(dropped), checksum=checksum(b"drop me")))
    await cache.concatenated(keep, drop)
    (cache.root / "tmp" / "crashed.part").write_bytes(b"left by a crash")
    assert await cache.prune({checksum(b"keep me")}) == 2
    assert cached_names(cache) == [keep.name]
    assert cached_names(cache, "combined") == []
    assert_no_leftovers(cache)
    assert await cache.prune({keep.name}) == 0  # bare hex is accepted too
    assert await cache.prune(set()) == 1
    assert await ArtifactCache(tmp_path / "never", max_bytes=1, timeout=1).prune(set()) == 0
