"""The fault-injection switch and the table of step boundaries it walks."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from volant.engine.faults import STEPS, Faults

pytestmark = pytest.mark.unit

ENGINE = Path(__file__).resolve().parents[2] / "volant" / "engine"


def test_every_boundary_in_the_code_is_declared() -> None:
    """A faults.at() the table does not list would never be walked, and the reverse."""
    called = {
        step
        for source in ENGINE.glob("*.py")
        if source.name != "faults.py"
        for step in re.findall(r'faults\.at\("([a-z-]+)"\)', source.read_text())
    }
    declared = {step for steps in STEPS.values() for step in steps}
    assert called == declared


def test_unarmed_boundaries_do_nothing(tmp_path: Path) -> None:
    faults = Faults()
    faults.at("recorded")
    assert faults.passed == []
    armed = Faults(tmp_path / "fault")  # configured, but no file written: nothing armed
    armed.at("recorded")
    assert armed.passed == [":recorded"]


def test_the_outermost_verb_names_the_step(tmp_path: Path) -> None:
    faults = Faults(tmp_path / "fault")

    async def restart() -> None:
        async with faults.verb("restart"):
            async with faults.verb("stop"):
                faults.at("stopping")
            await asyncio.create_task(_start(faults))
        async with faults.verb("stop"):
            faults.at("stopped")

    asyncio.run(restart())
    assert faults.passed == ["restart:stopping", "restart:running", "stop:stopped"]


async def _start(faults: Faults) -> None:
    async with faults.verb("start"):
        faults.at("running")


def test_an_armed_boundary_kills_the_process_once(tmp_path: Path) -> None:
    armed = tmp_path / "fault"
    armed.write_text("create:recorded\n")
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from volant.engine.faults import Faults\n"
        "faults = Faults(Path(sys.argv[1]))\n"
        "async def main():\n"
        "    async with faults.verb('create'):\n"
        "        faults.at('starting')\n"
        "        print('passed starting', flush=True)\n"
        "        faults.at('recorded')\n"
        "        print('not reached', flush=True)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(armed)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == -9
    assert proc.stdout == "passed starting\n"
    assert "fault injection: SIGKILL at create:recorded" in proc.stderr
    assert not armed.exists()
