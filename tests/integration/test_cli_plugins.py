"""`volar plugins` and plugin-backed `volar vms` against a real volantd on its unix socket."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.guest.cpio import Tree, cpio_newc
from tests.integration.daemon import Daemon, build_guest, running_daemon

pytestmark = pytest.mark.integration

NAME = "clitest"


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def daemon(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("volantd"), plugins=()) as d:
        yield d


def write_plugin(directory: Path, name: str = NAME, /, **changes: Any) -> Path:
    """A manifest in directory whose initramfs sits beside it, named by a relative path: the
    daemon can only find it by resolving against the origin volar sends."""
    files = directory / "files"
    files.mkdir(parents=True, exist_ok=True)
    tree = Tree()
    tree.file("etc/volant-plugin", f"{name}\n".encode())
    artifact = files / f"{name}.cpio"
    artifact.write_bytes(cpio_newc(tree.entries.values(), block=512))
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": name,
        "resources": {"cpu_cores": 1, "memory_mb": 160},
        "workload": {"type": "process", "entrypoint": ["/bin/true"]},
        "initramfs": {
            "path": f"files/{artifact.name}",
            "checksum": "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest(),
        },
        "network": {"mode": "bridged"},
        "labels": {"suite": "cli"},
    } | changes
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def failed(proc: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(error line, hint line) of a volar run that must fail with exit status 1."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("volar: error: "), proc.stderr
    hints = [line for line in lines[1:] if line.startswith("hint: ")]
    return lines[0], hints[0] if hints else ""


def listed(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(ok(daemon.volar("plugins", "list", "--json")))}


def row(daemon: Daemon, name: str) -> list[str]:
    rows = [line.split() for line in ok(daemon.volar("plugins", "list")).splitlines()]
    assert rows[0] == ["NAME", "VERSION", "RUNTIME", "ENABLED", "SIGNER", "DIGEST"]
    return next(r for r in rows[1:] if r[0] == name)


def test_install_list_show_replace_remove(daemon: Daemon, tmp_path: Path) -> None:
    manifest = write_plugin(tmp_path / "pkg")
    out = ok(daemon.volar("plugins", "install", str(manifest)))
    assert out.startswith(f"Plugin {NAME} 1.0.0 installed (unsigned, digest ")

    plugin = listed(daemon)[NAME]
    assert plugin["source"] == manifest.resolve().as_uri()
    assert (plugin["version"], plugin["enabled"], plugin["signer"]) == ("1.0.0", True, None)
    digest = plugin["digest"].removeprefix("sha256:")
    assert row(daemon, NAME) == [NAME, "1.0.0", NAME, "yes", "-", digest[:12]]

    shown = json.loads(ok(daemon.volar("plugins", "show", NAME, "--json")))
    assert shown["manifest"]["initramfs"]["path"] == f"files/{NAME}.cpio"
    assert shown["manifest"]["labels"] == {"suite": "cli"}
    details = ok(daemon.volar("plugins", "show", NAME))
    assert f"digest:     {plugin['digest']}" in details
    assert "\nmanifest:\n" in details
    assert f'"path": "files/{NAME}.cpio"' in details

    error, hint = failed(daemon.volar("plugins", "install", str(manifest)))
    assert "already installed" in error
    assert "--replace" in hint

    upgraded = write_plugin(tmp_path / "pkg2", version="1.1.0")
    out = ok(daemon.volar("plugins", "install", str(upgraded), "--replace", "--json"))
    assert json.loads(out)["version"] == "1.1.0"
    assert listed(daemon)[NAME]["source"] == upgraded.resolve().as_uri()
    assert row(daemon, NAME)[1] == "1.1.0"

    assert ok(daemon.volar("plugins", "remove", NAME)) == f"Plugin {NAME} removed\n"
    assert NAME not in listed(daemon)
    error, hint = failed(daemon.volar("plugins", "show", NAME))
    assert f"no plugin named '{NAME}'" in error
    assert "volar plugins list" in hint


def test_disable_enable_and_remove_while_in_use(daemon: Daemon, tmp_path: Path) -> None:
    name = "inuse"
    ok(daemon.volar("plugins", "install", str(write_plugin(tmp_path, name))))

    assert ok(daemon.volar("plugins", "disable", name)) == f"Plugin {name} disabled\n"
    assert row(daemon, name)[3] == "no"
    error, hint = failed(daemon.volar("vms", "create", "refused", "--plugin", name))
    assert "disabled" in error
    assert f"volar plugins enable {name}" in hint
    enabled = json.loads(ok(daemon.volar("plugins", "enable", name, "--json")))
    assert enabled["enabled"] is True
    assert row(daemon, name)[3] == "yes"

    vm = json.loads(ok(daemon.volar("vms", "create", "user1", "--plugin", name, "--json")))
    assert (vm["plugin"], vm["status"], vm["status_reason"]) == (name, "running", "")
    try:
        error, hint = failed(daemon.volar("plugins", "remove", name))
        assert name in error
        assert "delete those VMs first" in hint
        assert name in listed(daemon)
    finally:
        ok(daemon.volar("vms", "delete", "user1"))
    ok(daemon.volar("plugins", "remove", name))
    assert name not in listed(daemon)


BAD_MANIFESTS: list[tuple[dict[str, Any], str]] = [
    ({"resources": {"cpu_cores": 1, "memory_mb": 1}}, "resources.memory_mb"),
    ({"name": "Not_A_Label"}, "name"),
    ({"workload": {"type": "process"}}, "entrypoint"),
    ({"initramfs": {"path": "files/missing.cpio"}}, "checksum"),
]


@pytest.mark.parametrize(("change", "field"), BAD_MANIFESTS)
def test_bad_manifest_names_the_field(
    daemon: Daemon, tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    manifest = write_plugin(tmp_path, "badone", **change)
    error, _hint = failed(daemon.volar("plugins", "install", str(manifest)))
    assert field in error
    assert "badone" not in listed(daemon)


def test_bad_artifact_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    manifest = write_plugin(tmp_path, "badsum")
    (tmp_path / "files" / "badsum.cpio").write_bytes(b"changed after the manifest was written")
    error, _hint = failed(daemon.volar("plugins", "install", str(manifest)))
    assert "initramfs" in error
    assert "badsum" not in listed(daemon)

    not_json = tmp_path / "broken.json"
    not_json.write_text("{ this is not a manifest")
    failed(daemon.volar("plugins", "install", str(not_json)))


def test_schema(daemon: Daemon) -> None:
    schema = json.loads(ok(daemon.volar("plugins", "schema")))
    assert schema["title"] == "Volant plugin manifest"
    assert "initramfs" in schema["properties"]


def test_signed_install(guest: Path, tmp_path: Path) -> None:
    keys, trusted, state = tmp_path / "keys", tmp_path / "trusted", tmp_path / "volantd"
    trusted.mkdir()
    state.mkdir()
    settings = {"plugins.trusted_keys_dir": str(trusted), "plugins.require_signature": True}
    with running_daemon(state, settings, plugins=()) as d:
        ok(d.volar("plugins", "keygen", "release", "--dir", str(keys)))
        shutil.copy(keys / "release.pub", trusted / "release.pub")

        unsigned = write_plugin(tmp_path / "unsigned", "unsigned")
        error, hint = failed(d.volar("plugins", "install", str(unsigned)))
        assert "not signed" in error
        assert "volar plugins sign" in hint

        manifest = write_plugin(tmp_path / "signed", "signed")
        ok(d.volar("plugins", "sign", str(manifest), "--key", str(keys / "release.key")))
        out = ok(d.volar("plugins", "install", str(manifest)))
        assert "signed by release" in out
        assert listed(d)["signed"]["signer"] == "release"
        assert row(d, "signed")[4] == "release"

        # A signature kept elsewhere, named with --signature.
        other = write_plugin(tmp_path / "other", "other")
        elsewhere = tmp_path / "other.signature"
        ok(
            d.volar(
                "plugins",
                "sign",
                str(other),
                "--key",
                str(keys / "release.key"),
                "--out",
                str(elsewhere),
            )
        )
        ok(d.volar("plugins", "install", str(other), "--signature", str(elsewhere)))
        assert listed(d)["other"]["signer"] == "release"

        # Changed after signing: the .sig next to it no longer matches.
        manifest.write_text(manifest.read_text().replace("1.0.0", "6.6.6"))
        error, _hint = failed(d.volar("plugins", "install", str(manifest), "--replace"))
        assert "does not match" in error
        assert listed(d)["signed"]["version"] == "1.0.0"
