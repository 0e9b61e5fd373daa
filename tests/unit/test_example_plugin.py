"""The example plugin's manifest is valid and carries a good signature by the example key."""

from __future__ import annotations

from pathlib import Path

import pytest

from volant.plugins.manifest import load_manifest
from volant.plugins.signing import verify

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "plugins" / "hello"


def test_hello_manifest_is_signed_by_the_example_key() -> None:
    manifest = HELLO / "manifest.json"
    signature = (HELLO / "manifest.json.sig").read_text()
    signer = verify(manifest.read_bytes(), signature, ROOT / "examples" / "keys")
    assert signer == "volant-examples"
    assert load_manifest(manifest).name == "hello"
