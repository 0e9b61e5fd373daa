"""The commented defaults file (`volantd --print-defaults`, /etc/volant/volantd.yaml in the
Debian package) lists every setting and, uncommented, loads back to the defaults."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from volant.config import SETTINGS, load_config
from volant.config.docs import WIDTH, defaults_yaml

pytestmark = pytest.mark.unit

SETTING_LINE = re.compile(r"^(\s*)#([a-z_]+):(.*)$")


def uncommented(text: str) -> str:
    """The file with every setting and section line switched on, as an operator would."""
    return "\n".join(SETTING_LINE.sub(r"\1\2:\3", line) for line in text.splitlines()) + "\n"


def test_all_commented_out_and_loads_as_empty(tmp_path: Path) -> None:
    text = defaults_yaml()
    assert yaml.safe_load(text) is None
    assert all(len(line) <= WIDTH for line in text.splitlines())
    path = tmp_path / "volantd.yaml"
    path.write_text(text)
    env = {"HOME": str(tmp_path)}
    assert load_config([path], env=env) == load_config([], env=env)


def test_every_setting_listed_with_help_and_env() -> None:
    text = defaults_yaml()
    data = yaml.safe_load(uncommented(text))
    for setting in SETTINGS:
        head, _, leaf = setting.name.rpartition(".")
        assert leaf in (data[head] if head else data), setting.name
        assert setting.env in text
        assert setting.help.split()[0] in text


def test_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "volantd.yaml"
    path.write_text(uncommented(defaults_yaml()))
    env = {"HOME": str(tmp_path)}
    assert load_config([path], env=env) == load_config([], env=env)


def test_volantd_print_defaults() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from volant.daemon.main import main; main()", "--print-defaults"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == defaults_yaml()
