"""Image references, image configs as workloads, platform choice: pure functions, no tools."""

from __future__ import annotations

from typing import Any

import pytest

from volant.model import ErrorCode, InvalidArgument
from volant.storage import ImageRef, Transport, UnsupportedImage, parse_image_ref
from volant.storage.image import check_platform, created_epoch, pick_platform, workload_from_config
from volant.storage.rootfs import fs_uuid

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "want", "skopeo"),
    [
        ("docker://nginx", ImageRef(Transport.DOCKER, "nginx"), "docker://nginx:latest"),
        (
            "docker://127.0.0.1:5000/test/app:v1",
            ImageRef(Transport.DOCKER, "127.0.0.1:5000/test/app", "v1"),
            "docker://127.0.0.1:5000/test/app:v1",
        ),
        (
            "docker://127.0.0.1:5000/test/app",
            ImageRef(Transport.DOCKER, "127.0.0.1:5000/test/app"),
            "docker://127.0.0.1:5000/test/app:latest",
        ),
        (
            f"docker://reg.example/a/b:1.0@{DIGEST}",
            ImageRef(Transport.DOCKER, "reg.example/a/b", "1.0", DIGEST),
            f"docker://reg.example/a/b@{DIGEST}",  # skopeo refuses tag and digest together
        ),
        ("oci:/srv/layout:v2", ImageRef(Transport.OCI, "/srv/layout", "v2"), "oci:/srv/layout:v2"),
        ("oci:layout", ImageRef(Transport.OCI, "layout"), "oci:layout"),
        (
            "oci-archive:/x/a.tar",
            ImageRef(Transport.OCI_ARCHIVE, "/x/a.tar"),
            "oci-archive:/x/a.tar",
        ),
        (
            "docker-archive:/x/d.tar:app:1",
            ImageRef(Transport.DOCKER_ARCHIVE, "/x/d.tar", "app:1"),
            "docker-archive:/x/d.tar:app:1",
        ),
    ],
)
def test_parse_image_ref(text: str, want: ImageRef, skopeo: str) -> None:
    ref = parse_image_ref(text)
    assert ref == want
    assert ref.skopeo() == skopeo
    assert parse_image_ref(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nginx:latest", "starts with one of"),
        ("http://reg/x", "starts with one of"),
        ("docker:nginx", "docker://HOST/NAME"),
        ("docker://reg/app@sha256:abc", "not a digest"),
        ("docker://reg/App", "not a repository name"),
        ("docker://reg/app:bad tag", "blanks"),
        ("docker://reg/app:-x", "not a valid tag"),
        ("oci:", "starts with one of"),
        ("oci::tag", "names no path"),
    ],
)
def test_bad_image_refs(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as caught:
        parse_image_ref(text, field="image")
    assert caught.value.field == "image"
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_pinned_only_changes_registry_refs() -> None:
    remote = parse_image_ref("docker://reg/app:1")
    assert remote.pinned(DIGEST).skopeo() == f"docker://reg/app@{DIGEST}"
    local = parse_image_ref("oci:/l:1")
    assert local.pinned(DIGEST) is local


def test_workload_from_config() -> None:
    config: dict[str, Any] = {
        "config": {
            "Entrypoint": ["/bin/busybox", "httpd"],
            "Cmd": ["-f", "-p", "8080"],
            "Env": ["PATH=/bin", "GREETING=a=b", "INHERITED", "PATH=/usr/bin:/bin"],
            "WorkingDir": "/home/app",
            "User": "app:app",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9000": {}},
        }
    }
    work = workload_from_config(config)
    assert work.argv == ("/bin/busybox", "httpd", "-f", "-p", "8080")
    assert work.env == {"PATH": "/usr/bin:/bin", "GREETING": "a=b"}
    assert work.workdir == "/home/app"
    assert work.user == "app:app"
    assert work.exposed_ports == ("53/udp", "8080/tcp", "9000/tcp")


def test_empty_config_is_an_empty_workload() -> None:
    work = workload_from_config({})
    assert (work.argv, work.env, work.workdir, work.user, work.exposed_ports) == (
        (),
        {},
        "",
        "",
        (),
    )


@pytest.mark.parametrize(
    "run",
    [{"Cmd": "echo hi"}, {"Env": [1]}, {"User": 0}, {"ExposedPorts": ["80"]}],
)
def test_malformed_config_is_refused(run: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedImage, match="image config"):
        workload_from_config({"config": run})


def test_platform() -> None:
    ref = parse_image_ref("docker://reg/app")
    check_platform({"os": "linux", "architecture": "amd64"}, ref)
    with pytest.raises(UnsupportedImage, match="linux/arm64 image; Volant runs linux/amd64"):
        check_platform({"os": "linux", "architecture": "arm64"}, ref)
    index = {
        "manifests": [
            {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    assert pick_platform(index, ref) == "sha256:2"
    with pytest.raises(UnsupportedImage, match=r"platforms: linux/arm64, linux/s390x"):
        pick_platform(
            {
                "manifests": [
                    {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "s390x"}},
                    {"digest": "sha256:3", "platform": {"os": "linux", "architecture": "arm64"}},
                ]
            },
            ref,
        )


@pytest.mark.parametrize(
    ("created", "epoch"),
    [
        ("2024-05-01T12:00:00Z", 1714564800),
        ("2024-05-01T12:00:00.123456789Z", 1714564800),
        ("2024-05-01T14:00:00+02:00", 1714564800),
        ("1970-01-01T00:00:00Z", 0),
        ("yesterday", 0),
        (None, 0),
    ],
)
def test_created_epoch(created: str | None, epoch: int) -> None:
    assert created_epoch({"created": created}) == epoch


def test_fs_uuid_is_fixed_per_digest() -> None:
    assert fs_uuid(DIGEST) == fs_uuid(DIGEST)
    assert fs_uuid(DIGEST) != fs_uuid("sha256:" + "cd" * 32)
    assert fs_uuid(DIGEST) == "abababab-abab-4bab-abab-abababababab"
