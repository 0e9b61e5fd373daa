"""volantd and its state database at start: it refuses a damaged one (exit status 65, the file
and the way out in its log) and copies an existing one aside before migrating it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.integration.daemon import BIN, netns, running_daemon
from tests.unit.test_store_safety import PAGE, damage
from volant.store import MIGRATIONS, SqliteStore

pytestmark = pytest.mark.integration


def test_volantd_refuses_a_damaged_database(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        d.call(lambda c: c.list_events())
    db = tmp_path / "state" / "state.db"
    pages = db.stat().st_size // PAGE
    assert pages > 20
    damage(db, pages // 2)
    config = tmp_path / "volantd.yaml"  # as running_daemon wrote it
    with netns() as ns:  # should it start after all, it must not touch the host's network
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, str(BIN / "volantd"), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 65, proc.stderr
    lines = proc.stderr.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if "volantd failed" in line) :]
    assert len(lines) == 2, proc.stderr
    assert (
        f"volantd failed: the state database {db} is corrupt (SQLite's quick_check: Page "
        in (lines[0])
    )
    assert lines[0].endswith("); volantd does not run on a damaged database")
    assert lines[1].startswith(
        f"hint: stop volantd and move state.db, state.db-wal and state.db-shm in {db.parent} aside"
    )
    assert not (tmp_path / "run" / "volantd.sock").exists()


def test_volantd_copies_the_database_aside_before_migrating(tmp_path: Path) -> None:
    db = tmp_path / "state" / "state.db"

    async def older() -> None:
        await (await SqliteStore.open(db, migrations=MIGRATIONS[:-1])).close()

    asyncio.run(older())
    db.chmod(0o640)
    with running_daemon(tmp_path) as d:
        assert d.call(lambda c: c.list_plugins())
    before, after = MIGRATIONS[-2].version, MIGRATIONS[-1].version
    copy = db.with_name(f"state.db.pre-migration-{before}-to-{after}")
    assert copy.stat().st_mode & 0o777 == 0o640
    assert f"copied {db} to {copy} before migrating its schema" in d.log_text()
    # A second start has nothing to migrate, so nothing more to copy.
    with running_daemon(tmp_path):
        pass
    assert sorted(p.name for p in db.parent.glob("state.db.pre-migration-*")) == [copy.name]
