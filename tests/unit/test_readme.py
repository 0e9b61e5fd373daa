"""Every command the README shows an operator is run by a test (tests/readme.py)."""

from __future__ import annotations

import pytest

from scripts.readme_settings import README, render
from tests.readme import blocks, untagged_sh_blocks

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("heading", ["Install", "Quick start", "Troubleshooting"])
def test_every_operator_block_is_run_by_a_test(heading: str) -> None:
    assert untagged_sh_blocks(heading) == 0


def test_the_tagged_blocks_hold_commands() -> None:
    assert blocks("install")[0].startswith("apt install ./volant_")
    assert "volar vms create web --plugin hello" in blocks("quickstart")
    assert len(blocks("troubleshooting")) >= 8


def test_comments_and_blank_lines_are_not_commands() -> None:
    text = "<!-- test: x -->\n```sh\n# a comment\n\nls -l    # list\n```\n"
    assert blocks("x", text) == ["ls -l"]


def test_the_configuration_reference_is_the_settings_table() -> None:
    text = README.read_text()
    assert render(text) == text, "run: python3 -m scripts.readme_settings"
