"""The ledger: a record around every host change, written before and after it.

`make` writes the intent, changes the host, then records the outcome; `remove` changes the
host, then drops the record. A SIGKILL between any two of those leaves a record that says what
may exist, so the next start (volant.engine.repair) can find and remove it even when its name
could not be guessed from a VM's name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from volant.engine.ports import Store
from volant.model import ResourceKind

log = logging.getLogger("volant.engine.engine")

HostChange = Callable[[], Awaitable[object]]


class Ledger:
    """Records host resources in the store around the changes that make and remove them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def make(
        self, vm: str, kind: ResourceKind, name: str, create: HostChange, destroy: HostChange
    ) -> None:
        """Record the intent, run create, record the outcome. When create fails, or the
        outcome cannot be recorded (a full disk), destroy undoes whatever create did and the
        record goes, shielded from cancellation: the caller only undoes what `make` returned
        from."""
        await self.store.intend_resource(kind, name, vm)
        try:
            await create()
            await self.store.resource_made(kind, name)
        except BaseException:
            await asyncio.shield(self._quietly(kind, name, destroy))
            raise

    async def remove(self, kind: ResourceKind, name: str, destroy: HostChange) -> None:
        """Remove the resource from the host, then its record."""
        await destroy()
        await self.store.forget_resource(kind, name)

    async def adopt(self, vm: str, kind: ResourceKind, name: str) -> None:
        """Record a resource that exists already (made before records were kept)."""
        await self.store.intend_resource(kind, name, vm)
        await self.store.resource_made(kind, name)

    async def _quietly(self, kind: ResourceKind, name: str, destroy: HostChange) -> None:
        try:
            await self.remove(kind, name, destroy)
        except Exception:
            log.exception("could not undo %s %s; the next start removes it", kind, name)
