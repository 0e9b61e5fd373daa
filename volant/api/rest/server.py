"""Serves the REST app on TCP (loopback by default) and on a unix socket."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
from pathlib import Path
from types import TracebackType

from aiohttp import web

from volant.model import InvalidArgument

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"api.listen must be host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def restrict_socket(path: Path, group: str) -> None:
    """Only the owner (root) and `group` may connect: the socket skips the API key, so its
    mode is the gate; polkit still judges every change a member of the group asks for.

    volantd.service lists the group in SupplementaryGroups=, which lets it hand the socket to
    the group without CAP_CHOWN. Without the group the socket stays the owner's alone."""
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    except (KeyError, PermissionError) as exc:
        os.chmod(path, 0o600)
        log.warning("REST socket %s is for its owner only: group %r: %s", path, group, exc)
        return
    os.chmod(path, 0o660)


class RestServer:
    """Async context manager owning the aiohttp runner and its sites."""

    def __init__(
        self,
        app: web.Application,
        *,
        listen: str,
        socket_path: Path | None,
        socket_group: str = "volant",
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        self._listen = listen
        self._socket_path = socket_path
        self._socket_group = socket_group
        self.addresses: list[str] = []

    async def __aenter__(self) -> RestServer:
        await self._runner.setup()
        try:
            if self._listen:
                host, port = split_listen(self._listen)
                await web.TCPSite(self._runner, host, port).start()
                self.addresses.append(f"http://{self._listen}")
            if self._socket_path is not None:
                path = self._socket_path
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                await web.UnixSite(self._runner, str(path)).start()
                restrict_socket(path, self._socket_group)
                self.addresses.append(f"unix:{path}")
        except BaseException:
            await self._runner.cleanup()
            raise
        log.info("REST API listening on %s", ", ".join(self.addresses))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
