"""Plugin builds without a daemon: the manifest an image and the flags make, the request's
checks, the worker's progress file and the transient unit's sandbox."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from volant.engine.buildrun import _error_of, _read_lines
from volant.host.builds import CAPABILITIES, service_properties
from volant.model import DownloadFailed, InternalError, InvalidArgument
from volant.model.builds import BuildSpec, ImageFacts
from volant.plugins.fromimage import (
    PORTS_LABEL,
    manifest_from_image,
    plugin_name_for,
    version_for,
    workload_from,
)
from volant.plugins.manifest import parse_manifest
from volant.storage.image import workload_from_config

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32
FACTS = ImageFacts(
    image="docker://registry.example:5000/team/web:1.25",
    digest=DIGEST,
    entrypoint=("/docker-entrypoint.sh",),
    cmd=("nginx", "-g", "daemon off;"),
    env={"PATH": "/usr/bin:/bin", "NGINX_VERSION": "1.25"},
    workdir="/srv",
    user="nginx",
    exposed_ports=("443/tcp", "80/tcp"),
    rootfs_path="/var/lib/volant/images/rootfs/ab.v1.erofs",
    rootfs_checksum="sha256:" + "cd" * 32,
    rootfs_size=4096,
    cache_hit=False,
)


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("docker://registry.example:5000/team/web:1.25", "web"),
        ("docker://registry.example/app@sha256:" + "0" * 64, "app"),
        ("oci:/srv/layouts/My_Image:latest", "my-image"),
        ("oci-archive:/tmp/redis.tar", "redis"),
        ("docker-archive:/tmp/pg.tar:postgres:16", "pg"),
    ],
)
def test_default_plugin_name(image: str, name: str) -> None:
    assert plugin_name_for(image) == name


def test_default_version_is_the_tag_or_the_digest() -> None:
    assert version_for("docker://r.example/web:1.25", DIGEST) == "1.25"
    assert version_for("docker://r.example/web", DIGEST) == "ab" * 6
    assert version_for("oci:/srv/layout:latest", DIGEST) == "ab" * 6


def test_the_image_config_is_the_workload() -> None:
    manifest = manifest_from_image(FACTS, BuildSpec(image=FACTS.image), "web")
    assert manifest["workload"] == {
        "type": "process",
        "entrypoint": ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"],
        "env": {"PATH": "/usr/bin:/bin", "NGINX_VERSION": "1.25"},
        "workdir": "/srv",
        "user": "nginx",
    }
    assert manifest["image"] == FACTS.image
    assert manifest["image_digest"] == DIGEST
    assert manifest["rootfs"] == {
        "path": FACTS.rootfs_path,
        "checksum": FACTS.rootfs_checksum,
        "format": "erofs",
    }
    assert manifest["labels"] == {PORTS_LABEL: "443/tcp,80/tcp"}
    assert manifest["version"] == "1.25"
    parsed = parse_manifest(json.dumps(manifest))
    assert parsed.image_digest == DIGEST
    assert parsed.rootfs is not None


def test_each_flag_replaces_its_part() -> None:
    spec = BuildSpec(
        image=FACTS.image,
        version="7",
        args=("nginx", "-T"),
        env={"NGINX_VERSION": "override", "EXTRA": "1"},
        workdir="/",
        user="0:0",
        health_path="/healthz",
        cpu_cores=2,
        memory_mb=256,
    )
    manifest = manifest_from_image(FACTS, spec, "web")
    workload = manifest["workload"]
    assert workload["entrypoint"] == ["/docker-entrypoint.sh", "nginx", "-T"]
    assert workload["env"] == {"PATH": "/usr/bin:/bin", "NGINX_VERSION": "override", "EXTRA": "1"}
    assert (workload["workdir"], workload["user"]) == ("/", "0:0")
    assert workload["type"] == "http"
    assert workload["base_url"] == "http://127.0.0.1:443"  # the first exposed TCP port
    assert workload["health_check"] == {"path": "/healthz"}
    assert manifest["resources"] == {"cpu_cores": 2, "memory_mb": 256}
    assert manifest["version"] == "7"
    parse_manifest(json.dumps(manifest))


def test_an_entrypoint_drops_the_image_cmd_and_empty_strings_clear() -> None:
    spec = BuildSpec(image=FACTS.image, entrypoint=("/bin/sh",), workdir="", user="")
    workload = workload_from(FACTS, spec)
    assert workload["entrypoint"] == ["/bin/sh"]
    assert "workdir" not in workload
    assert "user" not in workload
    with_args = workload_from(FACTS, replace(spec, args=("-c", "true")))
    assert with_args["entrypoint"] == ["/bin/sh", "-c", "true"]


def test_nothing_to_run_names_the_flag() -> None:
    bare = replace(FACTS, entrypoint=(), cmd=())
    with pytest.raises(InvalidArgument, match="names no Entrypoint or Cmd") as info:
        workload_from(bare, BuildSpec(image=bare.image))
    assert info.value.field == "entrypoint"
    assert "--entrypoint" in info.value.hint


def test_http_without_a_port_needs_a_base_url() -> None:
    closed = replace(FACTS, exposed_ports=("53/udp",))
    with pytest.raises(InvalidArgument, match="exposes no TCP port") as info:
        workload_from(closed, BuildSpec(image=closed.image, workload_type="http"))
    assert info.value.field == "base_url"
    given = BuildSpec(image=closed.image, base_url="http://127.0.0.1:9000", health_path="/")
    assert workload_from(closed, given)["base_url"] == "http://127.0.0.1:9000"


def test_a_bad_user_fails_the_manifest_check() -> None:
    manifest = manifest_from_image(FACTS, BuildSpec(image=FACTS.image, user="no such"), "web")
    with pytest.raises(InvalidArgument, match=r"workload\.user"):
        parse_manifest(json.dumps(manifest))


def test_spec_from_front_end_input() -> None:
    spec = BuildSpec.from_dict(
        {"image": "oci:/x", "args": ["a"], "env": {"A": "1"}, "replace": True, "cpu_cores": 2}
    )
    assert spec.args == ("a",)
    assert spec.env == {"A": "1"}
    assert spec.entrypoint is None
    for bad, field in (
        ({}, "image"),
        ({"image": "oci:/x", "args": "a"}, "args"),
        ({"image": "oci:/x", "env": {"A": 1}}, "env"),
        ({"image": "oci:/x", "cpu_cores": True}, "cpu_cores"),
        ({"image": "oci:/x", "bogus": 1}, "bogus"),
    ):
        with pytest.raises(InvalidArgument) as info:
            BuildSpec.from_dict(bad)
        assert info.value.field == field


def test_progress_lines_are_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    assert _read_lines(path, 0) == ([], 0)
    path.write_bytes(b'{"type": "progress", "step": "pull"}\n{"type": "do')
    records, offset = _read_lines(path, 0)
    assert records == [{"type": "progress", "step": "pull"}]
    with path.open("ab") as f:
        f.write(b'ne", "x": 1}\n')
    assert _read_lines(path, offset) == ([{"type": "done", "x": 1}], path.stat().st_size)


def test_worker_errors_keep_their_code() -> None:
    error = _error_of(
        {"type": "error", "code": "DownloadFailed", "message": "m", "hint": "h", "field": ""}
    )
    assert isinstance(error, DownloadFailed)
    assert (error.message, error.hint) == ("m", "h")
    assert isinstance(_error_of({"type": "error", "code": "Bogus", "message": "m"}), InternalError)


def test_the_worker_unit_keeps_only_what_a_build_needs() -> None:
    props = dict(
        service_properties(
            "0123456789ab",
            ["/usr/bin/python3", "-m", "volant.storage.worker"],
            Path("/var/lib/volant/builds/0123456789ab/worker.log"),
            [Path("/var/lib/volant/images"), Path("/var/lib/volant/builds/0123456789ab")],
        )
    )
    mask = props["CapabilityBoundingSet"][1]
    assert mask == sum(1 << bit for bit in CAPABILITIES.values())
    assert not mask & (1 << 21)  # CAP_SYS_ADMIN
    assert not mask & (1 << 12)  # CAP_NET_ADMIN: the daemon's, not the build's
    assert props["ProtectSystem"] == ("s", "strict")
    assert props["ReadWritePaths"][1] == [
        "/var/lib/volant/images",
        "/var/lib/volant/builds/0123456789ab",
    ]
    assert props["NoNewPrivileges"] == ("b", True)
    assert "PrivateDevices" not in props  # it would drop CAP_MKNOD
    assert props["ExecStart"][1][0][1][:3] == ["/usr/bin/python3", "-m", "volant.storage.worker"]


def test_the_image_config_keeps_entrypoint_and_cmd_apart() -> None:
    config = {"config": {"Entrypoint": ["/init"], "Cmd": ["serve", "-v"]}}
    workload = workload_from_config(config)
    assert workload.argv == ("/init", "serve", "-v")
    assert (workload.entrypoint, workload.cmd) == (("/init",), ("serve", "-v"))


def test_a_health_check_on_a_process_workload_gets_a_base_url() -> None:
    spec = BuildSpec(image=FACTS.image, workload_type="process", health_path="/")
    workload = workload_from(FACTS, spec)
    assert (workload["type"], workload["base_url"]) == ("process", "http://127.0.0.1:443")
    parse_manifest(json.dumps(manifest_from_image(FACTS, spec, "web")))
