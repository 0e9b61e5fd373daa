"""Rootfs builds from local OCI sources: every transport, hostile layers, a full disk, cancel.

The images come from tests/integration/oci_images.py. Disk-full cases mount a small tmpfs under
the test's own directory and unmount it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.erofs import erofs_tree
from tests.integration.oci_images import ESCAPE_TARGET, image_layout
from volant.model import ErrorCode, InvalidArgument
from volant.storage import (
    Access,
    ImageCache,
    ImageNotFound,
    NoSpace,
    UnsafeImage,
    import_image,
    parse_image_ref,
    pull,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci keeps ownership only as root; mounts"),
]


def left_nothing(*dirs: Path) -> bool:
    return all(not d.exists() or not any(d.iterdir()) for d in dirs)


def left_nothing_partial(rootfs_cache: Path) -> bool:
    return not rootfs_cache.exists() or not any(rootfs_cache.glob(".*.part"))


@pytest.fixture
def escape_target() -> Iterator[Path]:
    """The host directory the hostile layers aim at: present and empty, so an escape would land."""
    target = Path(ESCAPE_TARGET)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    yield target
    shutil.rmtree(target, ignore_errors=True)


@pytest.mark.parametrize("transport", ["oci", "oci-archive", "docker-archive"])
async def test_local_transports(tmp_path: Path, transport: str) -> None:
    layout = image_layout()
    source = f"oci:{layout}:app"
    if transport != "oci":
        archive = tmp_path / "app.tar"
        name = f"{archive}:volant/app:1" if transport == "docker-archive" else f"{archive}"
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"oci:{layout}:app", f"{transport}:{name}"], check=True
        )
        source = f"{transport}:{name}"
    done = await import_image(
        source, cache_dir=tmp_path / "cache", out=tmp_path / "app.erofs", work_dir=tmp_path / "w"
    )
    assert done.image.workload.user == "app"
    assert done.image.digest.startswith("sha256:")
    tree = erofs_tree(tmp_path / "app.erofs")
    assert "srv/www/index.html" in tree
    assert "etc/doomed.conf" not in tree
    assert tree["home/app/added.txt"].owner == "1000:1000"


async def test_missing_local_sources(tmp_path: Path) -> None:
    for ref in (f"oci:{tmp_path}/nothing:app", f"oci:{image_layout()}:no-such-tag"):
        with pytest.raises(ImageNotFound) as caught:
            await import_image(
                ref, cache_dir=tmp_path / "c", out=tmp_path / "o" / "x", work_dir=tmp_path / "w"
            )
        assert caught.value.code is ErrorCode.NOT_FOUND
    assert left_nothing(tmp_path / "o", tmp_path / "w")


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("dotdot", "climbs out of the image root"),
        ("abslink", "through the symbolic link 'evil'"),
        ("rellink", "through the symbolic link 'evil'"),
    ],
)
async def test_escaping_layers_are_refused(
    tmp_path: Path, escape_target: Path, tag: str, says: str
) -> None:
    with pytest.raises(UnsafeImage, match=says) as caught:
        await import_image(
            f"oci:{image_layout()}:{tag}",
            cache_dir=tmp_path / "cache",
            out=tmp_path / "out" / "x.erofs",
            work_dir=tmp_path / "work",
        )
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert list(escape_target.iterdir()) == []
    assert left_nothing(tmp_path / "out", tmp_path / "work")


@pytest.mark.parametrize("tag", ["dotdot", "abslink", "rellink"])
def test_umoci_contains_escapes_even_unchecked(
    tmp_path: Path, escape_target: Path, tag: str
) -> None:
    # The second line of defence, without volant's layer check: umoci resolves every path
    # inside the root, so the write lands in the image's own copy of the target directory.
    rootfs = tmp_path / "rootfs"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{image_layout()}:{tag}", str(rootfs)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert list(escape_target.iterdir()) == []
    inside = rootfs / ESCAPE_TARGET.lstrip("/") / tag
    assert inside.read_bytes() == b"escaped\n"


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at where, unmounted afterwards."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


# The app image: 1.1 MB of compressed layers, 2 MB unpacked, a 2 MB erofs.
@pytest.mark.parametrize(
    ("full", "size", "step"),
    [
        ("cache", "512k", "copying oci:"),  # skopeo
        ("cache", "1600k", "writing the erofs image"),  # the blobs fit, the build beside them not
        ("work", "512k", "unpacking"),  # umoci
        ("out", "512k", "app.erofs"),  # the copy from the cache
    ],
)
async def test_disk_full(tmp_path: Path, full: str, size: str, step: str) -> None:
    dirs = {name: tmp_path / name for name in ("cache", "work", "out")}
    with small_disk(dirs[full], size):
        with pytest.raises(NoSpace, match="no space left on the device") as caught:
            await import_image(
                f"oci:{image_layout()}:app",
                cache_dir=dirs["cache"],
                out=dirs["out"] / "app.erofs",
                work_dir=dirs["work"],
            )
        assert caught.value.code is ErrorCode.UNAVAILABLE
        assert step in caught.value.message
        assert left_nothing(dirs["out"], dirs["work"])
        assert left_nothing_partial(dirs["cache"] / "rootfs")
        # Only where the build itself succeeded (out was full) is it kept for the next try.
        builds = list((dirs["cache"] / "rootfs").glob("*.erofs"))
        assert len(builds) == (1 if full == "out" else 0)


async def test_cancelled_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    # The real mkfs.erofs packs this image in a fraction of a second, too short to land a
    # cancel in reliably on a loaded machine: a mkfs.erofs first on PATH holds the build there
    # (the tree is unpacked in work/, the image not yet written) until it is cancelled.
    bindir, started = tmp_path / "bin", tmp_path / "mkfs-started"
    bindir.mkdir()
    (bindir / "mkfs.erofs").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 600\n")
    (bindir / "mkfs.erofs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    task = asyncio.create_task(
        import_image(
            f"oci:{image_layout()}:app", cache_dir=tmp_path / "c", out=out / "x", work_dir=work
        )
    )
    async with asyncio.timeout(60):
        while not started.exists():
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
    assert any(work.iterdir())  # mid-build: the unpacked tree is there
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert left_nothing(out, work)
    ps = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True, check=False)
    assert ps.stdout == ""  # no umoci or mkfs.erofs left writing there


async def test_partial_blobs_of_a_killed_pull_are_removed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    await pull(parse_image_ref(f"oci:{image_layout()}:app"), cache)
    # What skopeo leaves when it is killed mid-blob (its temporary name in the layout).
    stale = cache.layout / "oci-put-blob1234567"
    stale.write_bytes(b"half a layer")
    await pull(parse_image_ref(f"oci:{image_layout()}:unique"), cache)
    assert not stale.exists()


async def test_missing_auth_file_is_named(tmp_path: Path) -> None:
    access = Access(authfile=tmp_path / "auth.json")
    with pytest.raises(InvalidArgument, match=r"authfile: .*auth\.json does not exist"):
        await pull(parse_image_ref("docker://127.0.0.1:1/x"), ImageCache(tmp_path), access)
