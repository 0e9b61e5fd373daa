"""volar's argument handling, request building and output, with no daemon behind it."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from tests.unit.run_volar import volar
from volant.cli.output import log_line, short_digest, vm_details
from volant.cli.plugins import InstallRequest, install_request

pytestmark = pytest.mark.unit

MANIFEST = b'{"name": "hello"}\n'


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_bytes(MANIFEST)
    return path


def test_install_from_a_file_sends_what_sign_wrote(tmp_path: Path, manifest: Path) -> None:
    keys = tmp_path / "keys"
    assert volar("plugins", "keygen", "rel", "--dir", str(keys))[0] == 0
    code, _out, err = volar("plugins", "sign", str(manifest), "--key", str(keys / "rel.key"))
    assert code == 0
    assert "volar plugins install" in err
    request = install_request(str(manifest), None)
    assert request == InstallRequest(
        manifest_text=MANIFEST.decode(),
        signature=(tmp_path / "manifest.json.sig").read_text().strip(),
        origin=manifest.resolve().as_uri(),
    )


def test_keygen_and_sign_json(tmp_path: Path, manifest: Path) -> None:
    code, out, err = volar("plugins", "keygen", "rel", "--dir", str(tmp_path), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "private_key": str(tmp_path / "rel.key"),
        "public_key": str(tmp_path / "rel.pub"),
    }
    code, out, err = volar(
        "plugins", "sign", str(manifest), "--key", str(tmp_path / "rel.key"), "--json"
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "manifest": str(manifest),
        "signature_file": str(tmp_path / "manifest.json.sig"),
    }


def test_install_origin_is_absolute_and_signature_explicit(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "manifest.json.sig").write_text("ZGVmYXVsdA==\n")
    other = tmp_path / "other.sig"
    other.write_text("  b3RoZXI=\n")
    monkeypatch.chdir(tmp_path)
    request = install_request("manifest.json", other)
    assert request.origin == f"file://{tmp_path}/manifest.json"
    assert request.signature == "b3RoZXI="
    assert install_request(manifest.as_uri(), None).signature == "ZGVmYXVsdA=="


def test_install_unsigned_file_and_url(manifest: Path, tmp_path: Path) -> None:
    assert install_request(str(manifest), None).signature is None
    url = "https://plugins.example.com/hello/manifest.json"
    assert install_request(url, None) == InstallRequest(url=url)
    sig = tmp_path / "s.sig"
    sig.write_text("c2ln\n")
    assert install_request(url, sig) == InstallRequest(url=url, signature="c2ln")


@pytest.mark.parametrize("source", ["ftp://example.com/m.json", "/no/such/manifest.json"])
def test_install_source_must_be_a_file_or_http_url(source: str) -> None:
    with pytest.raises(click.BadParameter):
        install_request(source, None)


def test_install_refuses_unreadable_text(tmp_path: Path) -> None:
    binary = tmp_path / "m.json"
    binary.write_bytes(b"\xff\xfe\x00")
    code, out, err = volar("--api", f"unix:{tmp_path}/none.sock", "plugins", "install", str(binary))
    assert (code, out) == (1, "")
    assert err == f"volar: error: manifest {binary} is not UTF-8 text\n"
    empty = tmp_path / "empty.sig"
    empty.write_text("\n")
    binary.write_bytes(MANIFEST)
    code, _out, err = volar("plugins", "install", str(binary), "--signature", str(empty))
    assert code == 1
    assert "is empty" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins", "install"],
        ["plugins", "install", "/no/such/file.json"],
        ["plugins", "install", "gopher://x/y"],
        ["plugins", "install", "m.json", "--signature", "/no/such.sig"],
        ["plugins", "show"],
        ["vms", "action", "web"],
        ["vms", "action", "web", "echo", "--data", "{not json"],
        ["vms", "action", "web", "echo", "--data", "@/no/such/body.json"],
        ["vms", "logs", "web", "--limit", "0"],
        ["vms", "logs", "web", "--limit", "many"],
        ["vms", "operations"],
        ["vms", "call", "web"],
        ["vms", "call", "web", "putItem", "--param", "id"],
        ["vms", "call", "web", "putItem", "--query", "=1"],
        ["vms", "call", "web", "putItem", "--body", "{not json"],
        ["vms", "call", "web", "putItem", "--body", "@/no/such/body.json"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, out, err = volar(*argv)
    assert code == 2
    assert out == ""
    assert "Usage: volar" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins", "list"],
        ["plugins", "schema"],
        ["plugins", "remove", "hello"],
        ["vms", "logs", "web", "--follow"],
        ["vms", "action", "web", "echo", "-d", '{"a": 1}'],
        ["vms", "openapi", "web"],
        ["vms", "operations", "web"],
        ["vms", "call", "web", "GET:/status", "--query", "code=1"],
    ],
)
def test_no_daemon_is_one_line_and_a_hint(tmp_path: Path, argv: list[str]) -> None:
    code, out, err = volar("--api", f"unix:{tmp_path}/none.sock", *argv)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("volar: error: cannot reach volantd at unix:")
    assert lines[1].startswith("hint: is volantd running?")


def test_log_line_and_digest() -> None:
    line = {"seq": 3, "ts": 0.5, "stream": "stderr", "line": "boom"}
    stamp, stream, text = log_line(line).rsplit(" ", 2)
    assert (stream, text) == ("stderr", "boom")
    assert stamp.endswith(".500")
    assert log_line({"ts": "2024-01-01T00:00:00Z", "stream": "stdout", "text": "x"}) == (
        "2024-01-01T00:00:00Z stdout x"
    )
    assert short_digest("sha256:" + "ab" * 32) == "abababababab"
    assert short_digest("") == "-"


def test_vm_details_shows_status_reason_only_when_set(capsys: pytest.CaptureFixture[str]) -> None:
    vm = {"name": "web", "status": "running", "status_reason": "", "labels": {"a": "b"}}
    vm_details(vm)
    out = capsys.readouterr().out
    assert "status_reason" not in out
    assert 'labels: {"a": "b"}' in out
    vm_details(vm | {"status": "error", "status_reason": "health check failed"})
    assert "status_reason: health check failed" in capsys.readouterr().out


def test_data_file_and_json_flags_parse(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"x": 1}))
    code, _out, err = volar(
        "--api", f"unix:{tmp_path}/none.sock", "vms", "action", "web", "echo", "-d", f"@{body}"
    )
    assert code == 1  # got past argument parsing to the (absent) daemon
    assert "cannot reach volantd" in err


def test_starting_volar_loads_no_host_plumbing() -> None:
    """Every volar command, shell completion included, starts without pyroute2 and the daemon's
    layers: only `volar setup` needs them, and imports them itself."""
    import subprocess
    import sys

    code = (
        "import sys, volant.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2' "
        "or m.startswith(('volant.setup', 'volant.network', 'volant.engine'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_create_checks_publish_before_asking_volantd(tmp_path: Path) -> None:
    api = f"unix:{tmp_path}/none.sock"
    code, _out, err = volar("--api", api, "vms", "create", "web", "--publish", "8080")
    assert code == 2
    assert "'8080' is not a published port" in err
    code, _out, err = volar("--api", api, "vms", "create", "web", "--publish", "80:1",
                            "--publish", "80:2")  # fmt: skip
    assert code == 2
    assert "take the same host port" in err
