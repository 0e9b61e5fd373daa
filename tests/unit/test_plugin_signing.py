"""Ed25519 manifest signatures, and `volar plugins keygen/sign`, on real files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from volant.cli.main import cli
from volant.model import ERROR_TABLE, ErrorCode, InvalidArgument, NameTaken, SignatureInvalid
from volant.plugins.signing import generate_keypair, load_private_key, sign, verify

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/plugins/hello/manifest.json"


@pytest.fixture
def manifest() -> bytes:
    return EXAMPLE.read_bytes()


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    directory = tmp_path / "trusted-keys.d"
    directory.mkdir()
    return directory


def _keypair(tmp_path: Path, name: str, trusted: Path | None) -> Path:
    key, pub = generate_keypair(tmp_path / "keys", name)
    if trusted is not None:
        (trusted / pub.name).write_bytes(pub.read_bytes())
    return key


def test_round_trip_names_the_key(tmp_path: Path, trusted: Path, manifest: bytes) -> None:
    _keypair(tmp_path, "other", trusted)
    key = _keypair(tmp_path, "publisher", trusted)
    signature = sign(manifest, key)
    assert len(base64.b64decode(signature)) == 64
    assert verify(manifest, signature, trusted) == "publisher"
    # Signatures are detached text files: surrounding whitespace is not part of them.
    assert verify(manifest, f"  {signature}\n", trusted) == "publisher"


def test_key_files_and_modes(tmp_path: Path) -> None:
    key, pub = generate_keypair(tmp_path / "new" / "dir", "k1")
    assert (key.name, pub.name) == ("k1.key", "k1.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    load_private_key(key)
    with pytest.raises(NameTaken):
        generate_keypair(tmp_path / "new" / "dir", "k1")
    with pytest.raises(InvalidArgument, match="invalid key name"):
        generate_keypair(tmp_path, "../evil")


def test_tampered_byte_is_refused(tmp_path: Path, trusted: Path, manifest: bytes) -> None:
    signature = sign(manifest, _keypair(tmp_path, "publisher", trusted))
    tampered = bytearray(manifest)
    tampered[10] ^= 0x01
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify(bytes(tampered), signature, trusted)
    # Appending whitespace changes the bytes too: the signature covers the file exactly.
    with pytest.raises(SignatureInvalid):
        verify(manifest + b"\n", signature, trusted)


def test_unknown_key_is_refused(tmp_path: Path, trusted: Path, manifest: bytes) -> None:
    _keypair(tmp_path, "trusted-one", trusted)
    stranger = _keypair(tmp_path, "stranger", None)
    with pytest.raises(SignatureInvalid, match="any trusted key") as caught:
        verify(manifest, sign(manifest, stranger), trusted)
    assert ERROR_TABLE[caught.value.code].http_status == 403
    assert caught.value.code is ErrorCode.SIGNATURE_INVALID


def test_unsigned_empty_dir_and_garbage(tmp_path: Path, trusted: Path, manifest: bytes) -> None:
    with pytest.raises(SignatureInvalid, match="not signed"):
        verify(manifest, None, trusted)
    assert verify(manifest, None, trusted, required=False) is None
    key = _keypair(tmp_path, "k", None)
    with pytest.raises(SignatureInvalid, match="no trusted keys"):
        verify(manifest, sign(manifest, key), trusted, required=False)
    with pytest.raises(SignatureInvalid, match="not base64"):
        verify(manifest, "!!!", trusted)
    with pytest.raises(SignatureInvalid, match="64"):
        verify(manifest, base64.b64encode(b"short").decode(), trusted)


def test_broken_and_foreign_trusted_keys_are_skipped(
    tmp_path: Path, trusted: Path, manifest: bytes
) -> None:
    (trusted / "broken.pub").write_text("not a key")
    ec_pub = generate_private_key(SECP256R1()).public_key()
    (trusted / "ecdsa.pub").write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    key = _keypair(tmp_path, "good", trusted)
    assert verify(manifest, sign(manifest, key), trusted) == "good"


def test_cli_keygen_and_sign(tmp_path: Path, trusted: Path) -> None:
    runner = CliRunner()
    keys = tmp_path / "keys"
    result = runner.invoke(cli, ["plugins", "keygen", "release", "--dir", str(keys)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((keys / "release.key").stat().st_mode) == 0o600
    (trusted / "release.pub").write_bytes((keys / "release.pub").read_bytes())

    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(EXAMPLE.read_bytes())
    result = runner.invoke(
        cli, ["plugins", "sign", str(manifest), "--key", str(keys / "release.key")]
    )
    assert result.exit_code == 0, result.output
    signature = (tmp_path / "manifest.json.sig").read_text()
    assert verify(manifest.read_bytes(), signature, trusted) == "release"

    out = tmp_path / "elsewhere.sig"
    result = runner.invoke(
        cli,
        ["plugins", "sign", str(manifest), "--key", str(keys / "release.key"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert verify(manifest.read_bytes(), out.read_text(), trusted) == "release"


def test_cli_errors_are_one_line_and_a_hint(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["plugins", "keygen", "dup", "--dir", str(tmp_path)]
    assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "volar: error:" in result.output
    assert "already exists" in result.output
    assert "Traceback" not in result.output

    not_a_key = tmp_path / "not.key"
    not_a_key.write_text("hello")
    result = runner.invoke(cli, ["plugins", "sign", str(EXAMPLE), "--key", str(not_a_key)])
    assert result.exit_code == 1
    assert "not an unencrypted PEM private key" in result.output
