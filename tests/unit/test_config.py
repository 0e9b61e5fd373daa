from __future__ import annotations

from pathlib import Path

import pytest

from volant.config import SETTINGS, Config, load_config
from volant.config.settings import config_fields
from volant.model import InvalidArgument

pytestmark = pytest.mark.unit


def test_table_and_config_fields_agree() -> None:
    assert [s.attr for s in SETTINGS] == config_fields()


def test_defaults_without_files(tmp_path: Path) -> None:
    cfg = load_config([], env={"HOME": str(tmp_path)})
    assert cfg.state_dir == tmp_path / ".volant"
    assert cfg.db_path == tmp_path / ".volant" / "state.db"
    assert cfg.api_listen == "127.0.0.1:7777"
    assert cfg.api_socket == cfg.runtime_dir / "volantd.sock"
    assert cfg.network_bridge == "vbr0"


def test_systemd_directories_win_over_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/volant",
           "RUNTIME_DIRECTORY": "/run/volant"}  # fmt: skip
    cfg = load_config([], env=env)
    assert cfg.state_dir == Path("/var/lib/volant")
    assert cfg.runtime_dir == Path("/run/volant")


def test_layers_later_wins_and_env_last(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("network:\n  bridge: br-a\n  subnet: 10.9.0.0/24\n  host_ip: 10.9.0.1\n")
    second = tmp_path / "b.yaml"
    second.write_text("network:\n  bridge: br-b\nruntime:\n  stop_timeout: 3\n")
    env = {"HOME": str(tmp_path), "VOLANT_RUNTIME_STOP_TIMEOUT": "7.5",
           "VOLANT_RUNTIME_START_PAUSED": "yes"}  # fmt: skip
    cfg = load_config([first, second], env=env)
    assert isinstance(cfg, Config)
    assert cfg.network_bridge == "br-b"
    assert cfg.network_subnet == "10.9.0.0/24"
    assert cfg.runtime_stop_timeout == 7.5
    assert cfg.runtime_start_paused is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope: 1\n", "unknown setting 'nope'"),
        ("runtime:\n  hypervisor: xen\n", "must be one of"),
        ("vm:\n  max_cpus: many\n", "vm.max_cpus"),
        ("network:\n  manage_bridge: maybe\n", "expected true or false"),
        ("[1, 2]\n", "expected a mapping"),
        ("network:\n  host_ip: 10.0.0.1\n", "not a host address"),
        ("events:\n  retention_days: -1\n", "must not be negative"),
        ("events:\n  max_rows: -5\n", "must not be negative"),
        ("events:\n  heartbeat_seconds: 0\n", "heartbeat_seconds must be positive"),
        ("events:\n  queue_size: 0\n", "queue_size must be at least 1"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "volantd.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        load_config([path], env={"HOME": str(tmp_path)})


def test_bad_env_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="VOLANT_VM_MAX_CPUS"):
        load_config([], env={"HOME": str(tmp_path), "VOLANT_VM_MAX_CPUS": "x"})


def test_volantd_check_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    good = tmp_path / "good.yaml"
    good.write_text("runtime:\n  accel: tcg\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime:\n  accel: fast\n")
    argv = [sys.executable, "-m", "volant.daemon.main", "--check-config", "--config"]
    ok = subprocess.run([*argv, str(good)], capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, f"volantd: configuration OK ({good})\n")
    wrong = subprocess.run([*argv, str(bad)], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2
    assert wrong.stderr == (
        f"volantd: {bad}: runtime.accel must be one of auto, kvm, tcg, got 'fast'\n"
    )
