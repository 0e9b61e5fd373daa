"""dbus.enabled: yes and no are obeyed; auto follows the system bus's presence."""

from __future__ import annotations

from pathlib import Path

import pytest

from volant.config import load_config
from volant.daemon.bus import SYSTEM_BUS_SOCKET, dbus_wanted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("yaml", "env", "wanted"),
    [
        ("dbus:\n  enabled: yes\n", {}, True),
        ("dbus:\n  enabled: no\n", {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"}, False),
        ("", {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"}, True),
        ("", {}, SYSTEM_BUS_SOCKET.exists()),
    ],
)
def test_dbus_enabled(yaml: str, env: dict[str, str], wanted: bool, tmp_path: Path) -> None:
    path = tmp_path / "volantd.yaml"
    path.write_text(yaml)
    config = load_config([path], env={"HOME": str(tmp_path)})
    assert dbus_wanted(config, env) is wanted
