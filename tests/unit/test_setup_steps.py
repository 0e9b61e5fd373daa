"""volar setup's file steps, its record and its runner, on a temporary tree.

The bridge, nftables and service steps change a live host: tests/system/test_setup.py runs them
inside the namespaced systemd.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from volant.model import InvalidArgument
from volant.network import ISOLATED_GROUP, bridge_table_text
from volant.setup import Action, Record, SetupPlan
from volant.setup.nft import ruleset_file, table_text
from volant.setup.steps import SYSCTL_TEXT, DirectoryStep, ForwardingStep, Step

pytestmark = pytest.mark.unit


class Broken:
    """A step that fails half-way: what ran before it must be taken back."""

    key = "broken"

    def describe(self) -> str:
        return "a step that fails"

    async def preflight(self) -> None:
        pass

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        pass

    async def in_place(self) -> bool:
        return False

    async def apply(self) -> dict[str, Any]:
        raise OSError("disk full")

    async def revert(self, made: dict[str, Any]) -> str:
        raise AssertionError("never made, never reverted")


def file_plan(tmp: Path, *extra: Step) -> tuple[SetupPlan, Path, Path]:
    """The file steps on tmp, with the record there now (as a later run of setup reads it);
    ip_forward starts as 0."""
    knob = tmp / "proc/ip_forward"
    if not knob.exists():
        knob.parent.mkdir(parents=True)
        knob.write_text("0\n")
    dropin = tmp / "etc/sysctl.d/60-volant.conf"
    steps: list[Step] = [
        DirectoryStep(tmp / "var/lib/volant", 0o750),
        DirectoryStep(tmp / "etc/volant", 0o755),
        ForwardingStep(dropin, knob),
        *extra,
    ]
    return SetupPlan(steps, Record.load(tmp / "var/lib/volant/setup.json")), knob, dropin


def actions(changes: list[Any]) -> list[str]:
    return [str(change.action) for change in changes]


async def test_setup_makes_records_and_is_idempotent(tmp_path: Path) -> None:
    plan, knob, dropin = file_plan(tmp_path)
    planned = await plan.apply(dry_run=True)
    assert actions(planned) == ["create"] * 3
    assert not (tmp_path / "etc/volant").exists()
    assert knob.read_text() == "0\n"

    assert actions(await plan.apply(dry_run=False)) == ["create"] * 3
    assert (tmp_path / "var/lib/volant").stat().st_mode & 0o777 == 0o750
    assert dropin.read_text() == SYSCTL_TEXT
    assert knob.read_text() == "1\n"
    record = json.loads((tmp_path / "var/lib/volant/setup.json").read_text())
    assert record["made"]["sysctl"] == {"previous_file": None, "previous_value": "0"}

    again, _, _ = file_plan(tmp_path)
    assert actions(await again.apply(dry_run=False)) == ["keep"] * 3


async def test_undo_removes_only_what_setup_made(tmp_path: Path) -> None:
    (tmp_path / "etc/volant").mkdir(parents=True)
    (tmp_path / "etc/volant/volantd.yaml").write_text("log_level: debug\n")
    plan, knob, dropin = file_plan(tmp_path)
    assert actions(await plan.apply(dry_run=False)) == ["create", "keep", "create"]

    plan, knob, dropin = file_plan(tmp_path)
    preview = await plan.undo(dry_run=True, force=False)
    assert actions(preview) == ["remove", "keep", "remove"]
    assert dropin.exists()

    changes = await plan.undo(dry_run=False, force=False)
    assert actions(changes) == ["remove", "keep", "remove"]
    assert changes[1].note == "not made by setup"
    assert not dropin.exists()
    assert knob.read_text() == "0\n"
    assert (tmp_path / "etc/volant/volantd.yaml").exists()
    assert not (tmp_path / "var/lib/volant").exists()  # the record went with it

    plan, _, _ = file_plan(tmp_path)
    assert actions(await plan.undo(dry_run=False, force=False)) == ["keep"] * 3


async def test_undo_keeps_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    plan, _, _ = file_plan(tmp_path)
    await plan.apply(dry_run=False)
    (tmp_path / "var/lib/volant/state.db").write_text("")
    changes = await plan.undo(dry_run=False, force=False)
    assert [c.note for c in changes if c.action == Action.KEEP] == ["kept: not empty"]
    assert (tmp_path / "var/lib/volant/state.db").exists()


async def test_undo_restores_a_sysctl_file_that_was_there(tmp_path: Path) -> None:
    dropin = tmp_path / "etc/sysctl.d/60-volant.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("net.ipv4.ip_forward=1  # the operator's own\n")
    plan, knob, _ = file_plan(tmp_path)
    await plan.apply(dry_run=False)
    await plan.undo(dry_run=False, force=False)
    assert dropin.read_text() == "net.ipv4.ip_forward=1  # the operator's own\n"
    assert knob.read_text() == "0\n"


async def test_a_failed_step_takes_back_what_this_run_made(tmp_path: Path) -> None:
    plan, knob, dropin = file_plan(tmp_path, Broken())
    with pytest.raises(OSError, match="disk full"):
        await plan.apply(dry_run=False)
    assert not (tmp_path / "etc/volant").exists()
    assert not (tmp_path / "var/lib/volant").exists()
    assert not dropin.exists()
    assert knob.read_text() == "0\n"


def test_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "setup.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="cannot read the setup record") as err:
        Record.load(path)
    assert "remove it" in err.value.hint


def test_the_nft_file_replaces_the_tables_it_lists() -> None:
    subnet = IPv4Network("10.77.0.0/24")
    text = ruleset_file("vbr9", subnet)
    assert text.index("delete table inet volant") < text.index(table_text("vbr9", subnet))
    assert text.index("delete table bridge volant") < text.index(bridge_table_text())
    assert "ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade" in text
    assert 'oifname "vbr9" ct state established,related accept' in text
    # No API port: no input chain.
    assert "hook input" not in text
    with_api = ruleset_file("vbr9", subnet, 7777)
    assert 'iifname "vbr9" tcp dport 7777 drop' in with_api
    assert with_api.count("hook input") == 1


def test_the_bridge_table_keeps_guests_from_each_others_agents() -> None:
    text = bridge_table_text()
    assert text.startswith("table bridge volant {\n")
    assert 'iifname "vt-*" oifname "vt-*" tcp dport 8080 drop' in text
    assert f"iifgroup {ISOLATED_GROUP} drop" in text
    assert f"oifgroup {ISOLATED_GROUP} drop" in text


@pytest.mark.parametrize(
    ("listen", "port"),
    [("127.0.0.1:7777", 7777), ("0.0.0.0:80", 80), ("[::1]:9000", 9000), ("", None)],
)
def test_the_api_port_comes_from_api_listen(listen: str, port: int | None, tmp_path: Path) -> None:
    from volant.config import load_config

    config = load_config([], env={"HOME": str(tmp_path), "VOLANT_API_LISTEN": listen})
    assert config.api_port == port


def test_without_systemd_the_service_step_is_reported_skipped(tmp_path: Path) -> None:
    from volant.config import load_config
    from volant.setup import host_plan

    config = load_config([], env={"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/volant"})
    plan = host_plan(config, root=tmp_path)
    if Path("/run/systemd/system").is_dir():
        pytest.skip("this host runs systemd")
    assert [str(c.action) for c in plan.skipped] == ["skip"]
    assert plan.skipped[0].what == "systemctl enable --now volantd.service"
    assert "systemd is not running" in plan.skipped[0].note
    assert [step.key for step in plan.steps][-2:] == ["bridge", "nftables"]
