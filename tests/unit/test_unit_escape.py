"""Unit-name escaping matches systemd-escape byte for byte."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from volant.host.units import escape_unit_name, scope_name

pytestmark = pytest.mark.unit

SAMPLES = [
    "web",
    "probe-1",
    "a/b/c",
    ".hidden",
    "in.middle.",
    "A_Z:09",
    "-",
    "--",
    "sp ace",
    "tab\tand\\back",
    "ünï©ødé",
    "x" * 63,
    "dollar$and%percent",
]


def test_known_escapes() -> None:
    assert escape_unit_name("probe-1") == "probe\\x2d1"
    assert escape_unit_name("a/b") == "a-b"
    assert escape_unit_name(".x") == "\\x2ex"
    assert escape_unit_name("x.") == "x."
    assert escape_unit_name("ü") == "\\xc3\\xbc"
    assert escape_unit_name("") == ""
    assert scope_name("web-1") == "volant-vm-web\\x2d1.scope"


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="systemd-escape missing")
@pytest.mark.parametrize("text", SAMPLES)
def test_matches_systemd_escape(text: str) -> None:
    expected = subprocess.run(
        ["systemd-escape", "--", text], capture_output=True, text=True, check=True
    ).stdout.rstrip("\n")
    assert escape_unit_name(text) == expected
