"""The host's config-disk encoder writes exactly what the guest agent reads: the manifest and
the agent secret, in a file only volantd's user may read."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from volant_agent.manifest import encode_config_disk, load, read_config_disk
from volant_agent.rootfs import Mount, parse_storage

from volant.model import UPPER_SERIAL, GuestMount, GuestRoot, InvalidArgument, LaunchSpec
from volant.runtime.cmdline import encode_manifest
from volant.runtime.configdisk import (
    MAX_DOCUMENT,
    config_disk_image,
    storage_document,
    write_config_disk,
)

pytestmark = pytest.mark.unit

SECRET = "Zm9vYmFyYmF6cXV4LXNlY3JldC1vZi10aGUtdm0"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "hello" / "manifest.json"


@pytest.fixture
def manifest() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    # Non-ASCII text and a large action table: what pushes a manifest off the command line.
    doc["labels"]["greeting"] = "grüß dich"
    doc["actions"].update(
        {f"a{i}": {"method": "GET", "path": f"/a/{i}", "timeout_ms": 100} for i in range(200)}
    )
    return doc


def test_bytes_equal_the_agents_encoder(manifest: dict[str, Any]) -> None:
    image = config_disk_image(manifest, SECRET)
    assert image == encode_config_disk(manifest, SECRET)
    assert config_disk_image(None, SECRET) == encode_config_disk(None, SECRET)
    assert len(image) % 512 == 0
    assert image.startswith(b"VOLCONF1")


def test_agent_reads_what_the_host_writes(manifest: dict[str, Any], tmp_path: Path) -> None:
    disk = write_config_disk(tmp_path / "config.img", manifest, SECRET)
    assert disk == tmp_path / "config.img"
    assert stat.S_IMODE(disk.stat().st_mode) == 0o600
    config = load("console=ttyS0", [disk])
    assert config.secret == SECRET
    read = config.manifest
    assert read is not None
    assert read.raw == manifest
    assert read.name == "hello"
    assert {a.name for a in read.actions} >= {"greet", "echo", "a199"}
    assert read.workload is not None
    assert read.workload.health_path == "/health"
    # No temporary file is left beside the disk.
    assert [p.name for p in tmp_path.iterdir()] == ["config.img"]


def test_rewrite_replaces_the_disk(manifest: dict[str, Any], tmp_path: Path) -> None:
    disk = tmp_path / "config.img"
    write_config_disk(disk, {"name": "first"}, "old-secret")
    write_config_disk(disk, manifest, SECRET)
    assert stat.S_IMODE(disk.stat().st_mode) == 0o600
    config = load("console=ttyS0", [disk])
    assert config.manifest is not None
    assert (config.manifest.name, config.secret) == ("hello", SECRET)


def test_document_holds_the_command_lines_json(manifest: dict[str, Any], tmp_path: Path) -> None:
    disk = write_config_disk(tmp_path / "config.img", manifest, SECRET)
    value = encode_manifest(manifest)
    on_cmdline = gzip.decompress(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert read_config_disk(disk) == {"agent_secret": SECRET, "manifest": json.loads(on_cmdline)}


def test_documents_over_one_mib_are_refused(tmp_path: Path) -> None:
    huge = {"name": "x", "labels": {"pad": "x" * MAX_DOCUMENT}}
    with pytest.raises(InvalidArgument, match="at most 1048576") as info:
        config_disk_image(huge, SECRET)
    assert info.value.field == "manifest"
    with pytest.raises(InvalidArgument):
        write_config_disk(tmp_path / "config.img", huge, SECRET)
    assert list(tmp_path.iterdir()) == []


# The image of ({"name": "x"}, "s") before the storage key existed: initramfs plugins without
# volumes must keep these bytes.
BEFORE_STORAGE = "45432a4ea6644aee86c2a8ad1338b0a2b386cbb13615567c78b55591bfc6c6cf"


def _spec(**changes: Any) -> LaunchSpec:
    base = LaunchSpec(
        name="web", cpus=1, memory_mb=256, kernel=Path("/k"), initramfs=None, cmdline="",
        mac="02:56:00:00:00:01", run_dir=Path("/run/x"), console_log=Path("/log"),
    )  # fmt: skip
    return replace(base, **changes)


def test_no_storage_keeps_the_old_bytes() -> None:
    assert storage_document(_spec()) is None
    image = config_disk_image({"name": "x"}, "s", storage_document(_spec()))
    assert hashlib.sha256(image).hexdigest() == BEFORE_STORAGE


def test_storage_bytes_equal_the_agents_and_it_reads_them(tmp_path: Path) -> None:
    mounts = (GuestMount("vol-data", "/srv/data", read_only=True),)
    for spec in (
        _spec(root=GuestRoot("erofs", upper=UPPER_SERIAL), mounts=mounts),
        _spec(root=GuestRoot("squashfs")),  # ephemeral: tmpfs upper layer
        _spec(mounts=mounts),  # volumes on an initramfs plugin
    ):
        storage = storage_document(spec)
        assert storage is not None
        image = config_disk_image({"name": "x"}, SECRET, storage)
        assert image == encode_config_disk({"name": "x"}, SECRET, storage)
        disk = write_config_disk(tmp_path / "config.img", {"name": "x"}, SECRET, storage)
        parsed = parse_storage(load("console=ttyS0", [disk]).storage)
        assert parsed.rootfs_format == (spec.root.format if spec.root else "")
        assert parsed.upper_serial == (spec.root.upper if spec.root else "")
        assert parsed.mounts == (Mount("vol-data", "/srv/data", True),)[: len(spec.mounts)]
    assert storage_document(_spec(root=GuestRoot("ext4", upper="volant-upper"))) == {
        "rootfs": {"serial": "volant-rootfs", "format": "ext4"},
        "upper": {"serial": "volant-upper"},
    }
