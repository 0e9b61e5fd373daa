"""The ledger on a real SQLite file: what `make` leaves on the host and in the records when
the change itself fails, and when the outcome cannot be written after it (a full disk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from volant.engine.ledger import Ledger
from volant.model import InsufficientStorage, ResourceKind
from volant.store import SqliteStore

pytestmark = pytest.mark.unit


class Host:
    """A stand-in for the host: the set of taps that exist."""

    def __init__(self) -> None:
        self.taps: set[str] = set()

    async def create(self) -> None:
        self.taps.add("vt-a")

    async def destroy(self) -> None:
        self.taps.discard("vt-a")


class FullAfterCreate(SqliteStore):
    """A store whose disk fills up between the intent and the outcome."""

    async def resource_made(self, kind: ResourceKind, name: str) -> None:
        raise InsufficientStorage("cannot write the state database state.db: no space left")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await FullAfterCreate.open(tmp_path / "state.db")
    try:
        yield store
    finally:
        await store.close()


async def test_an_outcome_that_cannot_be_written_undoes_the_change(store: SqliteStore) -> None:
    host = Host()
    with pytest.raises(InsufficientStorage):
        await Ledger(store).make("a", ResourceKind.TAP, "vt-a", host.create, host.destroy)
    assert host.taps == set()
    assert await store.list_resources() == []


async def test_a_failed_change_is_undone_and_forgotten(store: SqliteStore) -> None:
    host = Host()

    async def half_way() -> None:
        await host.create()
        raise OSError("netlink said no")

    with pytest.raises(OSError, match="netlink said no"):
        await Ledger(store).make("a", ResourceKind.TAP, "vt-a", half_way, host.destroy)
    assert host.taps == set()
    assert await store.list_resources() == []
