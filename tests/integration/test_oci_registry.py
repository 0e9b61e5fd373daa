"""OCI images pulled from a real registry over verified TLS and built into erofs root file systems.

The registry (Debian's docker-registry) runs inside a network namespace this module creates, on
its 127.0.0.1, with a throw-away CA and a password (tests/integration/registry.py); every pull
runs skopeo inside that namespace too. The images come from tests/integration/oci_images.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.erofs import erofs_read, erofs_tree
from tests.integration.netns_thread import run_in_netns
from tests.integration.oci_images import APP_UID, image_layout
from tests.integration.registry import HOST, Registry, serving_registry
from volant.model import DownloadFailed, ErrorCode, VolantError
from volant.storage import (
    Access,
    ImageCache,
    ImageCorrupt,
    ImageNotFound,
    ImportedImage,
    RegistryDenied,
    RegistryUnreachable,
    UnsupportedImage,
    import_image,
    parse_image_ref,
    pull,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, umoci and mounts need root"),
]

T = TypeVar("T")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    layout = image_layout()
    with serving_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(layout, "app", "volant/app:1")
        reg.push(layout, "app2", "volant/app:2")
        reg.push(layout, "arm64", "volant/app:arm64")
        reg.push(layout, "unique", "volant/unique:1")
        reg.push(layout, "multi", "volant/multi:1")
        reg.push(layout, "arm-only", "volant/multi:arm")
        yield reg


def access(reg: Registry) -> Access:
    return Access(authfile=reg.authfile, cert_dir=reg.cert_dir)


async def in_ns(reg: Registry, func: Callable[[], Awaitable[T]]) -> T:
    return await run_in_netns(reg.ns, func)


async def import_from(reg: Registry, ref: str, tmp: Path, cache: Path) -> ImportedImage:
    async def go() -> ImportedImage:
        return await import_image(
            ref, cache_dir=cache, out=tmp / "out" / "rootfs.erofs", work_dir=tmp / "work",
            access=access(reg),
        )  # fmt: skip

    return await in_ns(reg, go)


def blob_gets(reg: Registry) -> list[str]:
    return [path for method, path in reg.requests() if method == "GET" and "/blobs/" in path]


def assert_left_nothing(tmp: Path) -> None:
    for where in (tmp / "out", tmp / "work"):
        assert not where.exists() or list(where.iterdir()) == [], f"{where} is not empty"


async def test_pull_builds_the_image_with_both_layers(registry: Registry, tmp_path: Path) -> None:
    ref = f"docker://{HOST}/volant/app:1"
    done = await import_from(registry, ref, tmp_path, tmp_path / "cache")
    image, rootfs = done.image, done.rootfs
    # The digest is the registry's own: the one `skopeo copy --digestfile` reported at push.
    assert image.digest == registry.push(image_layout(), "app", "volant/app:1")
    assert (image.cache_hit, image.blobs_fetched, image.blobs_reused) == (False, 2, 0)
    assert not rootfs.reused
    assert image.workload.argv == ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/www")
    assert image.workload.env == {"PATH": "/bin", "GREETING": "hello from layer two"}
    assert (image.workload.workdir, image.workload.user) == ("/home/app", "app")
    assert image.workload.exposed_ports == ("8080/tcp",)

    tree = erofs_tree(Path(rootfs.path))
    assert tree["bin/busybox"].kind == "f"
    assert tree["bin/sh"].target == "busybox"
    assert "etc/passwd" in tree
    assert "etc/doomed.conf" not in tree  # whited out by layer 2
    assert "srv/www/old.html" not in tree  # hidden by layer 2's opaque whiteout
    assert not any(".wh." in path for path in tree)
    app = f"{APP_UID}:{APP_UID}"
    assert (tree["home/app"].owner, tree["home/app"].mode) == (app, 0o750)
    assert (tree["home/app/notes.txt"].owner, tree["home/app/notes.txt"].mode) == (app, 0o640)
    assert (tree["home/app/added.txt"].owner, tree["home/app/added.txt"].mode) == (app, 0o600)
    assert tree["srv/www/index.html"].owner == app
    assert tree["tmp"].mode == 0o1777
    assert erofs_read(Path(rootfs.path), "srv/www/index.html") == b"<h1>volant test image</h1>\n"
    assert rootfs.size == Path(rootfs.path).stat().st_size
    assert list((tmp_path / "work").iterdir()) == []


async def test_pinned_pull_and_index(registry: Registry, tmp_path: Path) -> None:
    app = registry.push(image_layout(), "app", "volant/app:1")
    ref = parse_image_ref(f"docker://{HOST}/volant/app@{app}")
    pinned = await in_ns(registry, lambda: pull(ref, ImageCache(tmp_path / "a"), access(registry)))
    assert (pinned.digest, pinned.cache_hit) == (app, False)
    # An index of arm64 and amd64 images resolves to the amd64 one: app's manifest.
    multi = parse_image_ref(f"docker://{HOST}/volant/multi:1")
    chosen = await in_ns(
        registry, lambda: pull(multi, ImageCache(tmp_path / "b"), access(registry))
    )
    assert chosen.digest == app
    assert chosen.workload.user == "app"


async def test_second_pull_is_a_cache_hit(registry: Registry, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    ref = parse_image_ref(f"docker://{HOST}/volant/app:1")
    first = await in_ns(registry, lambda: pull(ref, cache, access(registry)))
    assert not first.cache_hit
    gets = len(blob_gets(registry))
    requests = len(registry.requests())

    again = await in_ns(registry, lambda: pull(ref, cache, access(registry)))
    assert (again.cache_hit, again.digest, again.blobs_fetched) == (True, first.digest, 0)
    assert len(blob_gets(registry)) == gets  # a tag costs one manifest request, no blob
    pinned = parse_image_ref(f"docker://{HOST}/volant/app@{first.digest}")
    hit = await in_ns(registry, lambda: pull(pinned, cache, access(registry)))
    assert hit.cache_hit
    manifests_since = [p for _m, p in registry.requests()[requests:] if "/manifests/" in p]
    assert len(manifests_since) == 1  # the tag's; the digest-pinned pull asked nothing

    # app2 shares its first two layers with app: only the third is fetched.
    app2 = parse_image_ref(f"docker://{HOST}/volant/app:2")
    shared = await in_ns(registry, lambda: pull(app2, cache, access(registry)))
    assert (shared.cache_hit, shared.blobs_fetched, shared.blobs_reused) == (False, 1, 2)


async def test_second_build_reuses_the_rootfs(registry: Registry, tmp_path: Path) -> None:
    ref, cache = f"docker://{HOST}/volant/app:1", tmp_path / "cache"
    first = await import_from(registry, ref, tmp_path / "one", cache)
    again = await import_from(registry, ref, tmp_path / "two", cache)
    assert (again.image.cache_hit, again.rootfs.reused) == (True, True)
    assert again.rootfs.sha256 == first.rootfs.sha256
    # Same file system: out is a hard link to the kept build, not a copy.
    assert Path(again.rootfs.path).stat().st_ino == Path(first.rootfs.path).stat().st_ino

    (kept,) = (cache / "rootfs").glob("*.erofs")
    Path(first.rootfs.path).unlink()
    Path(again.rootfs.path).unlink()
    flip_a_byte(kept)
    rebuilt = await import_from(registry, ref, tmp_path / "three", cache)
    assert (rebuilt.image.cache_hit, rebuilt.rootfs.reused) == (True, False)
    assert rebuilt.rootfs.sha256 == first.rootfs.sha256


async def test_builds_are_byte_identical(registry: Registry, tmp_path: Path) -> None:
    # Separate caches, staging and output: nothing is shared but the image.
    ref = f"docker://{HOST}/volant/app:1"
    one = await import_from(registry, ref, tmp_path / "a", tmp_path / "a" / "cache")
    two = await import_from(registry, ref, tmp_path / "b", tmp_path / "b" / "cache")
    assert one.rootfs.sha256 == two.rootfs.sha256
    assert Path(one.rootfs.path).read_bytes() == Path(two.rootfs.path).read_bytes()
    assert one.rootfs.uuid == two.rootfs.uuid


async def test_tls_is_verified_by_default(registry: Registry, tmp_path: Path) -> None:
    ref = parse_image_ref(f"docker://{HOST}/volant/app:1")
    cache = ImageCache(tmp_path / "cache")
    no_ca = Access(authfile=registry.authfile)
    with pytest.raises(RegistryUnreachable, match="TLS verification failed") as caught:
        await in_ns(registry, lambda: pull(ref, cache, no_ca))
    assert caught.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "certificate" in caught.value.message
    assert not (tmp_path / "cache" / "oci" / "blobs").exists()


async def test_credentials_are_required(registry: Registry, tmp_path: Path) -> None:
    ref = parse_image_ref(f"docker://{HOST}/volant/app:1")
    anonymous = Access(cert_dir=registry.cert_dir)
    with pytest.raises(RegistryDenied, match="refused access") as caught:
        await in_ns(registry, lambda: pull(ref, ImageCache(tmp_path / "cache"), anonymous))
    assert caught.value.hint.startswith("give an auth file")


@pytest.mark.parametrize(
    ("ref", "error", "code", "says"),
    [
        (f"docker://{HOST}/volant/nope:1", ImageNotFound, ErrorCode.NOT_FOUND, "no such image"),
        (f"docker://{HOST}/volant/app:9", ImageNotFound, ErrorCode.NOT_FOUND, "no such image"),
        # Nothing listens on 5001 in the namespace: the registry is down.
        ("docker://127.0.0.1:5001/volant/app:1", RegistryUnreachable, ErrorCode.DOWNLOAD_FAILED,
         "unreachable"),
        (f"docker://{HOST}/volant/app:arm64", UnsupportedImage, ErrorCode.INVALID_ARGUMENT,
         "linux/arm64 image; Volant runs linux/amd64 images only"),
        (f"docker://{HOST}/volant/multi:arm", UnsupportedImage, ErrorCode.INVALID_ARGUMENT,
         r"offers no linux/amd64 image \(platforms: linux/arm64\)"),
        (f"docker://{HOST}/volant/app@sha256:{'0' * 64}", ImageNotFound, ErrorCode.NOT_FOUND,
         "no such image"),
    ],
)  # fmt: skip
async def test_pull_failures(
    registry: Registry,
    tmp_path: Path,
    ref: str,
    error: type[VolantError],
    code: ErrorCode,
    says: str,
) -> None:
    with pytest.raises(error, match=says) as caught:
        await import_from(registry, ref, tmp_path, tmp_path / "cache")
    assert caught.value.code is code
    assert_left_nothing(tmp_path)
    # The architecture is refused from the config alone, before any layer is fetched.
    layers = tmp_path / "cache" / "oci" / "blobs" / "sha256"
    assert not layers.exists() or len(list(layers.iterdir())) <= 1


async def test_corrupt_blob_in_the_registry(registry: Registry, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    ref = parse_image_ref(f"docker://{HOST}/volant/unique:1")
    layout = image_layout()
    digest = registry.push(layout, "unique", "volant/unique:1")
    layer = only_layer(layout, digest)
    blob = registry.blob_path(layer)
    good = blob.read_bytes()
    blob.write_bytes(good[:-64] + bytes(64))
    try:
        with pytest.raises(ImageCorrupt, match="corrupt") as caught:
            await import_from(registry, str(ref), tmp_path, tmp_path / "cache")
        assert isinstance(caught.value, DownloadFailed)
        assert not cache.has_blob(layer)  # skopeo keeps only blobs that matched
        assert_left_nothing(tmp_path)
    finally:
        blob.write_bytes(good)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def only_layer(layout: Path, digest: str) -> str:
    """The digest of the one layer of the image with manifest `digest` in layout."""
    manifest = json.loads(
        (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text()
    )
    (layer,) = manifest["layers"]
    return str(layer["digest"])


async def test_damaged_cache_blob_is_dropped_and_fetched_again(
    registry: Registry, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    ref = f"docker://{HOST}/volant/app:1"
    first = await import_from(registry, ref, tmp_path / "one", cache_dir)
    layer = first.image.layers[0].digest
    blob = ImageCache(cache_dir).blob_path(layer)
    flip_a_byte(blob)
    shutil.rmtree(cache_dir / "rootfs")  # or the kept build would be reused, blobs unread

    with pytest.raises(ImageCorrupt, match="does not match its digest") as caught:
        await import_from(registry, ref, tmp_path / "two", cache_dir)
    assert "pull the image again" in caught.value.hint
    assert not blob.exists()
    assert_left_nothing(tmp_path / "two")

    again = await import_from(registry, ref, tmp_path / "three", cache_dir)
    assert (again.image.cache_hit, again.image.blobs_fetched) == (False, 1)
    assert again.rootfs.sha256 == first.rootfs.sha256
