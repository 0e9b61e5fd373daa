"""Manifest and secret decoding: the kernel command line and the raw config disk."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from volant_agent.manifest import (
    DISK_MAGIC,
    GuestConfig,
    ManifestError,
    RestartPolicy,
    encode_config_disk,
    from_cmdline,
    load,
    parse,
    read_config_disk,
)

from volant.runtime.cmdline import encode_manifest

pytestmark = pytest.mark.unit

SECRET = "s3cret-for-the-agent"

HELLO = {
    "schema_version": 1,
    "name": "hello",
    "version": "1.0.0",
    "runtime": "hello",
    "workload": {
        "type": "http",
        "entrypoint": ["python3", "/srv/app.py"],
        "env": {"GREETING": "hi"},
        "workdir": "/srv",
        "base_url": "http://127.0.0.1:9000",
        "restart": "always",
        "health_check": {"path": "/health", "timeout_ms": 500},
    },
    "actions": {"greet": {"method": "get", "path": "/greet", "timeout_ms": 1000}},
}


def test_cmdline_round_trip_with_the_host_encoder() -> None:
    ip = "ip=1.2.3.4::1.2.3.1:255.255.255.0:web:eth0:off"
    line = f"console=ttyS0 {ip} volant.manifest={encode_manifest(HELLO)} quiet"
    m = from_cmdline(line)
    assert m is not None
    assert (m.name, m.version) == ("hello", "1.0.0")
    assert m.workload is not None
    assert m.workload.entrypoint == ("python3", "/srv/app.py")
    assert m.workload.restart is RestartPolicy.ALWAYS
    assert m.workload.health_path == "/health"
    assert m.workload.health_timeout_ms == 500
    assert [(a.name, a.method, a.path) for a in m.actions] == [("greet", "GET", "/greet")]
    assert from_cmdline("console=ttyS0 quiet") is None


def test_bad_cmdline_values_are_refused() -> None:
    with pytest.raises(ManifestError, match="not valid"):
        from_cmdline("volant.manifest=!!!notbase64")
    with pytest.raises(ManifestError, match="entrypoint"):
        parse({"name": "x", "workload": {"entrypoint": []}})
    with pytest.raises(ManifestError, match="restart"):
        parse({"name": "x", "workload": {"entrypoint": ["a"], "restart": "sometimes"}})
    with pytest.raises(ManifestError, match="name"):
        parse({"version": "1"})


def test_only_the_workloads_health_check_counts() -> None:
    # The Go agent's top-level health_check{endpoint} is not a health check any more.
    legacy = {
        "name": "x",
        "health_check": {"endpoint": "/ok", "timeout_ms": 100},
        "workload": {"entrypoint": ["a"], "base_url": "http://127.0.0.1:1"},
    }
    wl = parse(legacy).workload
    assert wl is not None
    assert wl.health_path is None
    assert wl.health_timeout_ms == 2_000
    nested_endpoint = {
        "name": "x",
        "workload": {
            "entrypoint": ["a"],
            "base_url": "http://127.0.0.1:1",
            "health_check": {"endpoint": "/ok"},
        },
    }
    wl = parse(nested_endpoint).workload
    assert wl is not None
    assert wl.health_path is None
    with pytest.raises(ManifestError, match=r"workload\.health_check\.timeout_ms"):
        parse({"name": "x", "workload": {"entrypoint": ["a"], "health_check": {"timeout_ms": 0}}})


def test_config_disk_layout_is_exactly_as_documented(tmp_path: Path) -> None:
    image = encode_config_disk(HELLO, SECRET)
    assert len(image) % 512 == 0
    magic, length, digest = struct.unpack_from(">8sI32s", image)
    assert magic == DISK_MAGIC == b"VOLCONF1"
    document = image[44 : 44 + length]
    assert hashlib.sha256(document).digest() == digest
    assert json.loads(document) == {"agent_secret": SECRET, "manifest": HELLO}
    assert image[44 + length :].strip(b"\0") == b""
    disk = tmp_path / "config.img"
    disk.write_bytes(image)
    assert read_config_disk(disk) == {"agent_secret": SECRET, "manifest": HELLO}


def test_config_disk_is_used_when_the_cmdline_has_none(tmp_path: Path) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 4096)  # a disk that is not a config disk is skipped
    disk = tmp_path / "config.img"
    disk.write_bytes(encode_config_disk(HELLO, SECRET))
    config = load("console=ttyS0", [tmp_path / "missing", other, disk])
    assert config.manifest is not None
    assert config.manifest.name == "hello"
    assert (config.source, config.secret, config.error) == (str(disk), SECRET, None)
    assert load("console=ttyS0", [other]) == GuestConfig(None, "none", None)


def test_the_secret_comes_from_the_disk_even_when_the_manifest_is_on_the_cmdline(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "config.img"
    disk.write_bytes(encode_config_disk(None, SECRET))
    config = load(f"volant.manifest={encode_manifest(HELLO)}", [disk])
    assert config.manifest is not None
    assert (config.manifest.name, config.source, config.secret) == ("hello", "cmdline", SECRET)
    # A disk without a manifest and a command line without one: a secret, no workload.
    assert load("console=ttyS0", [disk]) == GuestConfig(None, "none", SECRET)
    # The secret never shows in a repr (a log line, a traceback).
    assert SECRET not in repr(config)


def test_a_bad_manifest_still_yields_the_secret(tmp_path: Path) -> None:
    disk = tmp_path / "config.img"
    disk.write_bytes(encode_config_disk({"version": "1"}, SECRET))
    config = load("console=ttyS0", [disk])
    assert (config.manifest, config.secret) == (None, SECRET)
    assert config.error is not None
    assert "name is required" in config.error
    bad_cmdline = load("volant.manifest=!!!notbase64", [disk])
    assert (bad_cmdline.manifest, bad_cmdline.secret) == (None, SECRET)
    assert bad_cmdline.source.startswith("error: volant.manifest is not valid")


def test_corrupt_config_disk_is_an_error(tmp_path: Path) -> None:
    image = bytearray(encode_config_disk(HELLO, SECRET))
    image[50] ^= 0xFF
    disk = tmp_path / "bad.img"
    disk.write_bytes(bytes(image))
    with pytest.raises(ManifestError, match="corrupt"):
        read_config_disk(disk)
    # load() never raises: the agent serves and says why it has no manifest (nor secret).
    config = load("console=ttyS0", [disk])
    assert (config.manifest, config.secret) == (None, None)
    assert config.error is not None
    assert "corrupt" in config.error
