"""The unit files as systemd reads them: `systemd-analyze verify` and the security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VOLANTD = ROOT / ".venv" / "bin" / "volantd"
MAX_EXPOSURE = 5.0


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart= exists: point it at this checkout's volantd.
    service = (ROOT / "units" / "volantd.service").read_text()
    (tmp_path / "volantd.service").write_text(
        re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={VOLANTD}", service)
    )
    shutil.copy(ROOT / "units" / "volant.slice", tmp_path / "volant.slice")
    return tmp_path


def analyze(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *argv], capture_output=True, text=True, timeout=60, check=False
    )


def test_units_verify(unit_dir: Path) -> None:
    proc = analyze("verify", str(unit_dir / "volantd.service"), str(unit_dir / "volant.slice"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_volantd_exposure_is_low(unit_dir: Path) -> None:
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit_dir / "volantd.service"))
    match = re.search(r"Overall exposure level for volantd.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security volantd.service: {exposure}")
    assert exposure < MAX_EXPOSURE


def test_packaging_snippets_parse(tmp_path: Path) -> None:
    sysusers = (ROOT / "packaging/sysusers.d/volant.conf").read_text()
    assert re.search(r"(?m)^g volant ", sysusers)
    tmpfiles = (ROOT / "packaging/tmpfiles.d/volant.conf").read_text()
    if shutil.which("systemd-tmpfiles") is None:
        pytest.skip("systemd-tmpfiles is not installed")
    proc = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", "-"],
        input=tmpfiles, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    dirs = ("run/volant", "var/lib/volant")
    modes = {path: oct((tmp_path / path).stat().st_mode & 0o777) for path in dirs}
    assert modes == {"run/volant": "0o755", "var/lib/volant": "0o750"}
