"""The layer check on hand-made tars: digests, and every way a tar tries to leave its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ocitar import Entry, digest, directory, file, gzipped, hardlink, symlink, tar_bytes
from volant.model import ErrorCode
from volant.storage import ImageCorrupt, UnsafeImage, UnsupportedImage
from volant.storage.image import Descriptor
from volant.storage.layers import DigestMismatch, TreeCheck, check_layer

pytestmark = pytest.mark.unit

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


def check(tmp_path: Path, layers: list[list[Entry]], media_type: str = GZIP) -> None:
    tree = TreeCheck()
    for number, entries in enumerate(layers, start=1):
        blob = tar_bytes(entries)
        blob = gzipped(blob) if media_type == GZIP else blob
        path = tmp_path / f"layer{number}"
        path.write_bytes(blob)
        check_layer(path, Descriptor(media_type, digest(blob), len(blob)), tree, number)


def test_ordinary_layers_pass(tmp_path: Path) -> None:
    base = [
        directory("./"),
        directory("bin"),
        file("bin/busybox", b"\x7fELF", 0o755),
        symlink("bin/sh", "busybox"),
        symlink("lib", "usr/lib"),  # usrmerge: an absolute or relative link, never written through
        symlink("etc/alternatives/editor", "/bin/busybox"),
        hardlink("bin/ls", "bin/busybox"),
        file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),  # a leading slash is not an escape
        file("etc/doomed", b"x"),
        directory("srv/old"),
        file("srv/old/a"),
    ]
    upper = [
        file("etc/.wh.doomed"),
        file("srv/old/.wh..wh..opq"),
        file("srv/old/b"),
        file("usr/lib/libc.so.6", b"\x7fELF"),
    ]
    check(tmp_path, [base, upper])
    check(tmp_path, [base, upper], media_type=TAR)


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        ([[file("../escape")]], "entry '../escape' climbs out"),
        ([[file("a/../../escape")]], "climbs out"),
        ([[hardlink("passwd", "../../etc/passwd")]], "hard link target '../../etc/passwd'"),
        ([[symlink("out", "/etc"), file("out/cron.d/x")]], "through the symbolic link 'out'"),
        ([[symlink("up", "../../.."), file("up/tmp/x")]], "through the symbolic link 'up'"),
        # The link in one layer, the write through it in the next.
        ([[symlink("etc", "/host/etc")], [file("etc/passwd")]], "symbolic link 'etc'"),
        ([[symlink("x", "/")], [hardlink("y", "x/etc/shadow")]], "symbolic link 'x'"),
        ([[symlink("x", "/")], [file("x/.wh.shadow")]], "symbolic link 'x'"),
    ],
)
def test_escapes_are_refused(tmp_path: Path, layers: list[list[Entry]], says: str) -> None:
    with pytest.raises(UnsafeImage, match=says) as caught:
        check(tmp_path, layers)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_whiteout_and_replacement_forget_links(tmp_path: Path) -> None:
    # A link that a later layer removes, or replaces by a directory, no longer redirects.
    check(tmp_path, [[symlink("a", "/etc")], [file(".wh.a")], [file("a/x")]])
    check(
        tmp_path, [[directory("d"), symlink("d/l", "/")], [file("d/.wh..wh..opq")], [file("d/l/x")]]
    )
    check(tmp_path, [[symlink("a", "/etc")], [directory("a"), file("a/x")]])


def test_opaque_whiteout_keeps_its_own_layers_links(tmp_path: Path) -> None:
    layer = [directory("d"), symlink("d/l", "/"), file("d/.wh..wh..opq"), file("d/l/x")]
    with pytest.raises(UnsafeImage, match="'d/l'"):
        check(tmp_path, [layer])


def test_digest_mismatch_is_corrupt(tmp_path: Path) -> None:
    blob = gzipped(tar_bytes([file("a", b"hello")]))
    path = tmp_path / "blob"
    path.write_bytes(blob[:-8] + b"\0" * 8)
    with pytest.raises(DigestMismatch, match="does not match its digest") as caught:
        check_layer(path, Descriptor(GZIP, digest(blob), len(blob)), TreeCheck(), 1)
    assert caught.value.code is ErrorCode.DOWNLOAD_FAILED


def test_matching_digest_but_no_tar_is_corrupt(tmp_path: Path) -> None:
    blob = gzipped(b"this is not a tar archive" * 40)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with pytest.raises(ImageCorrupt, match="is not a tar") as caught:
        check_layer(path, Descriptor(GZIP, digest(blob), len(blob)), TreeCheck(), 1)
    assert not isinstance(caught.value, DigestMismatch)


def test_zstd_layers_are_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    zstd = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", digest(b""), 4)
    with pytest.raises(UnsupportedImage, match=r"tar\+zstd"):
        check_layer(path, zstd, TreeCheck(), 1)
