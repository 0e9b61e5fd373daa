"""What volantd's transient services share: build workers (volant.host.builds) and helper
daemons (volant.host.helpers) are each started by systemd over the system bus, and stopped with
SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from sdbus import SdBusBaseError

from volant.host.systemd_dbus import SystemdClient
from volant.model import Unavailable

JOB_TIMEOUT = 30.0


class TransientServices:
    """A systemd client opened on first use, and the start and stop of transient services."""

    def __init__(self) -> None:
        self._client: SystemdClient | None = None

    async def systemd(self) -> SystemdClient:
        if self._client is None:
            client = SystemdClient()
            try:
                await client.__aenter__()
            except (SdBusBaseError, OSError) as exc:
                raise Unavailable(f"cannot reach systemd on the system bus: {exc}") from exc
            self._client = client
        return self._client

    async def start(self, unit: str, properties: list[tuple[str, tuple[str, Any]]]) -> None:
        """StartTransientUnit, waiting for its job; Unavailable when systemd refuses."""
        systemd = await self.systemd()
        try:
            result = await systemd.start_transient_unit(unit, properties, JOB_TIMEOUT)
        except (SdBusBaseError, TimeoutError) as exc:
            raise Unavailable(f"systemd could not start {unit}: {exc}") from exc
        if result != "done":
            raise Unavailable(f"systemd could not start {unit}: job {result}")

    async def stop(self, unit: str, ended: Callable[[], Awaitable[None]], grace: float) -> None:
        """SIGTERM, SIGKILL after grace seconds; returns once `ended()` does (or at once when
        the unit is not there to signal)."""
        systemd = await self.systemd()
        if not await systemd.kill_unit(unit, signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(ended(), grace)
        except TimeoutError:
            await systemd.kill_unit(unit, signal.SIGKILL)
            await ended()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
