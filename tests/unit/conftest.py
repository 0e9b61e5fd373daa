"""Fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.unit.volantd_standin import StandIn, serving

# Property tests check answers, not speed: on a loaded 2-core machine an example may take more
# than hypothesis' 200 ms deadline, or generating data may trip its too_slow health check.
settings.register_profile("volant", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("volant")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    """The scripted stand-in for volantd and volar's --api for it."""
    daemon = StandIn()
    with serving(daemon.app(), tmp_path / "api.sock") as api:
        yield daemon, api
