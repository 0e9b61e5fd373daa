"""SqliteStore: the engine's Store port on one SQLite file, driven from asyncio.

Threading: peewee keeps one connection per thread, and SQLite wants one writer. The store owns a
single-thread executor; the database is connected, queried and closed only on that thread, so
writes are serialised in order of arrival and the event loop never waits on disk. A call whose
caller is cancelled still runs to its end (or not at all), so a transaction is never cut in half.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import peewee

from volant.model import (
    Event,
    EventType,
    HostResource,
    InsufficientStorage,
    InvalidArgument,
    Plugin,
    ResourceKind,
    Unavailable,
    VirtualMachine,
    VMQuery,
    VMSpec,
    VolantError,
)
from volant.store import events, ops, plugins, pool, resources
from volant.store.migrations import MIGRATIONS, Migration, check_order
from volant.store.opening import connect
from volant.store.ops import MacFor
from volant.store.space import RESERVE_BYTES, Reserve, full_error, is_disk_full
from volant.store.volumes import SqliteVolumes

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 5000
THREAD_NAME = "volant-store"
# Events deleted per transaction when pruning.
PRUNE_CHUNK = 5000


def _database(path: Path) -> peewee.SqliteDatabase:
    return peewee.SqliteDatabase(
        str(path),
        pragmas=[
            ("journal_mode", "wal"),
            ("foreign_keys", 1),
            ("busy_timeout", BUSY_TIMEOUT_MS),
            ("synchronous", "normal"),
        ],
        timeout=BUSY_TIMEOUT_MS / 1000,
        # Every transaction here writes: take the write lock at BEGIN, so two processes never
        # both read the pool and then collide on the upgrade to a write lock.
        lock_type="IMMEDIATE",
        # Using the database from any thread but the store's raises instead of quietly
        # opening a second connection.
        autoconnect=False,
    )


class SqliteStore:
    """Persistent state of VMs, the IP pool, plugins and events.

    Build it with `await SqliteStore.open()`.
    """

    def __init__(
        self, db: peewee.SqliteDatabase, executor: ThreadPoolExecutor, path: Path, reserve: Reserve
    ) -> None:
        self._db = db
        self._executor = executor
        self._reserve = reserve
        self._closed = False
        # The pool's subnet and exclusions as ensure_pool last made it (delete_vm retires a
        # released address outside it).
        self._pool: tuple[IPv4Network, frozenset[IPv4Address]] | None = None
        self.path = path
        self.volumes = SqliteVolumes(db, self._call, self._add)
        """Volume records (the engine's VolumeStore), on this store's thread."""

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> Self:
        """Open (creating it and its parent directories), check and migrate the database at
        path, copying an existing one aside first when a migration will change it.

        Raises StateCorrupt when an existing database fails SQLite's quick_check, and
        InsufficientStorage when there is no room to migrate it. Keeps a reserve of
        reserve_bytes next to it (see volant.store.space).
        """
        check_order(migrations)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        db = _database(path)
        reserve = Reserve(path, reserve_bytes)
        try:
            await asyncio.get_running_loop().run_in_executor(
                executor, connect, db, path, migrations, reserve
            )
        except BaseException:
            # Queued behind a connect that may still be running if we were cancelled.
            executor.submit(db.close)
            executor.shutdown(wait=False)
            raise
        return cls(db, executor, path, reserve)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run fn on the store thread and wait for it without blocking the event loop."""
        if self._closed:
            raise Unavailable("the state store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, fn)

    def _guarded(self, fn: Callable[[], _T]) -> _T:
        """fn, with a full disk reported as InsufficientStorage; the reserve is given up then,
        so the caller's clean-up has room to write."""
        try:
            return fn()
        except Exception as exc:
            if isinstance(exc, VolantError) or not is_disk_full(exc):
                raise
            self._reserve.release()
            raise full_error(self.path) from exc

    async def _add(self, fn: Callable[[], _T]) -> _T:
        """_call for fn that records something new: refused at once while there is no room for
        the reserve, so that a request that fails half-way can always undo its first half."""
        return await self._call(functools.partial(self._adding, fn))

    def _adding(self, fn: Callable[[], _T]) -> _T:
        if not self._reserve.ensure():
            raise InsufficientStorage.at(
                self.path.parent,
                "no room to record anything new in the state database",
                f"less than {self._reserve.size // 1024} KiB free",
            )
        return fn()

    async def close(self) -> None:
        """Close the database and stop the store thread; later calls raise Unavailable."""
        if self._closed:
            return
        # Refuse new calls at once; calls already queued still run before the close.
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=True)

    async def ensure_pool(self, network: IPv4Network, exclude: set[IPv4Address]) -> int:
        """Seed the pool with network's hosts minus exclude; return the pool's size."""
        self._pool = (network, frozenset(exclude))
        return await self._call(functools.partial(pool.ensure_pool, self._db, network, exclude))

    async def create_vm(
        self,
        spec: VMSpec,
        *,
        runtime: str,
        unit: str,
        mac_for: MacFor,
        lease_ip: bool = True,
        manifest_json: str = "",
        agent_secret: str = "",
    ) -> VirtualMachine:
        """Insert the VM in status creating, leasing the lowest free IP in the same transaction.

        spec.isolated is recorded as it is (the caller folds the plugin's setting in).
        Raises NameTaken, PoolExhausted, or NotFound/InvalidState when its plugin is not
        installed or disabled, and then leaves nothing behind.
        """
        return await self._add(
            functools.partial(
                ops.create_vm,
                self._db,
                spec,
                runtime=runtime,
                unit=unit,
                mac_for=mac_for,
                lease_ip=lease_ip,
                manifest_json=manifest_json,
                agent_secret=agent_secret,
            )
        )

    async def get_vm(self, name: str) -> VirtualMachine:
        """The VM called name; NotFound when there is none."""
        return await self._call(functools.partial(ops.get_vm, self._db, name))

    async def list_vms(self) -> list[VirtualMachine]:
        """Every VM, ordered by name."""
        return await self._call(functools.partial(ops.list_vms, self._db))

    async def query_vms(self, query: VMQuery) -> tuple[list[VirtualMachine], int]:
        return await self._call(functools.partial(ops.query_vms, self._db, query))

    async def update_vm(self, name: str, **fields: Any) -> VirtualMachine:
        """Change status, status_reason, pid, kernel_cmdline, unit or agent_secret; bumps
        updated_at.

        Unknown fields or wrong types raise TypeError before anything is written.
        """
        values = ops.check_update(fields)
        return await self._call(functools.partial(ops.update_vm, self._db, name, values))

    async def delete_vm(self, name: str) -> None:
        """Delete the row and release its IP lease in one transaction; NotFound if absent."""
        await self._call(functools.partial(ops.delete_vm, self._db, name, self._in_pool))

    def _in_pool(self, address: IPv4Address) -> bool:
        if self._pool is None:
            return True
        network, exclude = self._pool
        return address in network and address not in exclude

    async def set_vm_address(self, name: str, ip_address: str | None) -> VirtualMachine:
        """Record the DHCP-learned address of a VM without a pool lease."""
        return await self._call(functools.partial(ops.set_vm_address, self._db, name, ip_address))

    async def append_event(
        self, type: EventType, vm: str, payload: dict[str, Any] | None = None
    ) -> Event:
        """Persist an event; its id is greater than every earlier event's."""
        # Serialised here so an unencodable payload fails in the caller, not on the store thread.
        payload_json = json.dumps(payload or {}, separators=(",", ":"))
        return await self._call(
            functools.partial(events.append_event, self._db, EventType(type), vm, payload_json)
        )

    async def list_events(
        self,
        after_id: int = 0,
        limit: int = 1000,
        *,
        vm: str | None = None,
        types: Collection[EventType] = (),
    ) -> list[Event]:
        """Events with id > after_id, oldest first, at most limit of them; only those of vm
        and of one of types when given."""
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1, got {limit}", field="limit")
        return await self._call(
            functools.partial(
                events.list_events, self._db, after_id, limit, vm, frozenset(map(EventType, types))
            )
        )

    async def last_event_id(self) -> int:
        """The largest event id ever handed out; 0 before the first event."""
        return await self._call(functools.partial(events.last_event_id, self._db))

    async def prune_events(
        self, older_than: datetime | None = None, keep_rows: int | None = None
    ) -> int:
        """Delete events recorded before older_than and all but the keep_rows newest; return
        how many went. Runs in chunks, so other store calls are not held up for long."""
        if older_than is not None and older_than.tzinfo is None:
            raise ValueError("older_than must be timezone-aware")
        if keep_rows is not None and keep_rows < 0:
            raise InvalidArgument(f"keep_rows must not be negative, got {keep_rows}")
        if older_than is None and keep_rows is None:
            return 0
        up_to = 0
        if keep_rows is not None:
            up_to = await self._call(functools.partial(events.prune_boundary, self._db, keep_rows))
        total = 0
        while True:
            deleted = await self._call(
                functools.partial(events.prune_chunk, self._db, older_than, up_to, PRUNE_CHUNK)
            )
            total += deleted
            if deleted < PRUNE_CHUNK:
                return total

    async def pool_usage(self) -> tuple[int, int]:
        """(leased, total) addresses of the pool."""
        return await self._call(functools.partial(pool.usage, self._db))

    async def add_plugin(
        self,
        manifest_json: str,
        name: str,
        version: str,
        runtime: str,
        digest: str,
        enabled: bool = True,
        *,
        signer: str = "",
        source: str = "",
        replace: bool = False,
    ) -> Plugin:
        """Record an installed plugin from its validated manifest.

        NameTaken if one of that name exists, unless replace: then its manifest, version and
        provenance change in place and its enabled flag and creation time stay.
        """
        return await self._add(
            functools.partial(
                plugins.add_plugin,
                self._db,
                manifest_json=manifest_json,
                name=name,
                version=version,
                runtime=runtime,
                digest=digest,
                enabled=bool(enabled),
                signer=signer,
                source=source,
                replace=replace,
            )
        )

    async def get_plugin(self, name: str) -> Plugin:
        """The plugin called name; NotFound when there is none."""
        return await self._call(functools.partial(plugins.get_plugin, self._db, name))

    async def list_plugins(self) -> list[Plugin]:
        """Every plugin, ordered by name."""
        return await self._call(functools.partial(plugins.list_plugins, self._db))

    async def set_plugin_enabled(self, name: str, enabled: bool) -> Plugin:
        """Enable or disable a plugin; updated_at changes only when the flag does."""
        return await self._call(
            functools.partial(plugins.set_plugin_enabled, self._db, name, bool(enabled))
        )

    async def delete_plugin(self, name: str) -> None:
        """Delete the plugin; Conflict while any VM uses it, NotFound if absent."""
        await self._call(functools.partial(plugins.delete_plugin, self._db, name))

    async def intend_resource(self, kind: ResourceKind, name: str, vm: str) -> None:
        """Record a host resource about to be made for vm (before the host change)."""
        await self._call(functools.partial(resources.intend, self._db, kind, name, vm))

    async def resource_made(self, kind: ResourceKind, name: str) -> None:
        """Record that the resource now exists (after the host change)."""
        await self._call(functools.partial(resources.made, self._db, kind, name))

    async def forget_resource(self, kind: ResourceKind, name: str) -> None:
        """Drop the record of a resource that is gone from the host."""
        await self._call(functools.partial(resources.forget, self._db, kind, name))

    async def list_resources(self, vm: str | None = None) -> list[HostResource]:
        """The records of host resources, of one VM or all."""
        return await self._call(functools.partial(resources.listing, self._db, vm))
