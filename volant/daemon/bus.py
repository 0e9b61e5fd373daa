"""The system-bus side of the daemon: the D-Bus API and the polkit client share one connection."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from sdbus import SdBusBaseError, sd_bus_open_system

from volant.api.dbus import SERVICE, DbusServer
from volant.auth.polkit import Authorizer
from volant.config import Config
from volant.engine import Engine
from volant.model import Unavailable

log = logging.getLogger(__name__)

SYSTEM_BUS_SOCKET = Path("/run/dbus/system_bus_socket")


def dbus_wanted(config: Config, env: Mapping[str, str] | None = None) -> bool:
    """dbus.enabled: yes, no, or auto (when a system bus is reachable)."""
    if config.dbus_enabled != "auto":
        return config.dbus_enabled == "yes"
    env = os.environ if env is None else env
    return bool(env.get("DBUS_SYSTEM_BUS_ADDRESS")) or SYSTEM_BUS_SOCKET.exists()


@contextlib.asynccontextmanager
async def serve_dbus(config: Config, engine: Engine) -> AsyncIterator[Authorizer]:
    """Serve com.volantvm.Volant1 when enabled; yield the authorizer the REST API shares.

    With dbus.enabled=auto a bus that refuses us (no bus policy installed, name taken) costs
    only the D-Bus API, with a warning; with yes it stops the daemon.
    """
    required = config.dbus_enabled == "yes"
    if not dbus_wanted(config):
        log.info("D-Bus API off (dbus.enabled=%s); polkit not consulted", config.dbus_enabled)
        yield Authorizer(None)
        return
    try:
        bus = sd_bus_open_system()
    except SdBusBaseError as exc:
        if required:
            raise Unavailable(f"cannot connect to the system bus: {exc}") from exc
        log.warning("D-Bus API off: cannot connect to the system bus: %s", exc)
        yield Authorizer(None)
        return
    try:
        authorizer = Authorizer(bus)
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(DbusServer(bus, engine, authorizer))
            except Unavailable as exc:
                if required:
                    raise
                log.warning("D-Bus API off: %s (is the bus policy %s.conf installed?)",
                            exc.message, SERVICE)  # fmt: skip
            yield authorizer
    finally:
        bus.close()
