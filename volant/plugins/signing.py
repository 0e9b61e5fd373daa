"""Ed25519 detached signatures over the exact bytes of a plugin manifest file.

The CLI imports this module (an exception to the "CLI only uses the client" contract, recorded in
pyproject.toml) so that `volar plugins keygen/sign` work offline with the very code the daemon
verifies with. Keep it free of the rest of volant.plugins and of anything but volant.model and
`cryptography`, so the exception stays that narrow.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from volant.model import InvalidArgument, NameTaken, SignatureInvalid

log = logging.getLogger(__name__)

TRUSTED_KEYS_DIR = Path("/etc/volant/trusted-keys.d")
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_BYTES = 64
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_key_name(name: str) -> str:
    # The name becomes a file name, and is what verify() reports back: no paths, no dot-files.
    if not KEY_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid key name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)",
            field="name",
        )
    return name


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write <name>.key (PKCS8 PEM, mode 0600) and <name>.pub (SubjectPublicKeyInfo PEM).

    Refuses with NameTaken when either file exists, so a key is never overwritten.
    """
    _check_key_name(name)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise NameTaken(f"{path} already exists", hint="pick another name or --dir")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created with 0600 and O_EXCL: the secret is never readable by others, not even briefly,
    # and a concurrent keygen cannot clobber it.
    _write_new(key_path, private_pem, 0o600)
    try:
        _write_new(pub_path, public_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode passed through the umask; make it exact
        os.write(fd, data)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; InvalidArgument when it is anything else."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InvalidArgument(f"cannot read key {path}: {exc.strerror}", field="key") from exc
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{path} is not an unencrypted PEM private key", field="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} is not an Ed25519 key", field="key")
    return key


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey | Path) -> str:
    """The detached signature of manifest_bytes, as one line of base64 text."""
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    return base64.b64encode(private.sign(manifest_bytes)).decode("ascii")


def _decode_signature(signature: str) -> bytes:
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("the signature is not base64 text") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureInvalid(
            f"the signature is {len(raw)} bytes long; an Ed25519 signature has {SIGNATURE_BYTES}"
        )
    return raw


def trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 public keys in directory/*.pub by name; unreadable or other keys are skipped."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            # One broken file must not lock out every plugin signed by the other keys.
            log.warning("skipping trusted key %s: %s", path, exc)
            continue
        if not isinstance(key, Ed25519PublicKey):
            log.warning("skipping trusted key %s: not an Ed25519 key", path)
            continue
        keys[path.stem] = key
    return keys


def verify(
    manifest_bytes: bytes,
    signature: str | None,
    trusted_keys_dir: Path = TRUSTED_KEYS_DIR,
    *,
    required: bool = True,
) -> str | None:
    """The name of the trusted key that signed manifest_bytes.

    None only for an unsigned manifest when signatures are not required; a signature that is
    present is always checked. Raises SignatureInvalid otherwise.
    """
    if signature is None:
        if required:
            raise SignatureInvalid(
                "the manifest is not signed, and this host requires signed plugins",
                hint="sign it with `volar plugins sign MANIFEST --key KEY`",
            )
        return None
    raw = _decode_signature(signature)
    keys = trusted_keys(trusted_keys_dir)
    if not keys:
        raise SignatureInvalid(
            f"no trusted keys in {trusted_keys_dir}",
            hint="install the signer's .pub file there",
        )
    for name, key in keys.items():
        try:
            key.verify(raw, manifest_bytes)
        except InvalidSignature:
            continue
        return name
    raise SignatureInvalid(
        "the signature does not match the manifest under any trusted key",
        hint=f"the manifest was changed after signing, or its signer's key is not in "
        f"{trusted_keys_dir}",
    )
