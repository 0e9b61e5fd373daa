"""Fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.volantd_standin import StandIn, serving


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    """The scripted stand-in for volantd and volar's --api for it."""
    daemon = StandIn()
    with serving(daemon.app(), tmp_path / "api.sock") as api:
        yield daemon, api
