"""Authorisation through polkit: one decision for D-Bus callers and unix-socket clients.

Each check asks `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` about a subject: the
caller's unique bus name for D-Bus, or the peer process (pid, start time, uid from SO_PEERCRED)
for the REST unix socket. Where no polkit answers (a developer box, a private test bus), only
root and the daemon's own user may change anything; reading stays open, as the read action's
`allow_any` says.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sdbus import (
    DbusInterfaceCommonAsync,
    DbusNameHasNoOwnerError,
    DbusServiceUnknownError,
    SdBus,
    SdBusBaseError,
    dbus_method_async,
)

from volant.model import PermissionDenied

log = logging.getLogger(__name__)

POLKIT_SERVICE = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
DBUS_SERVICE = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
NO_INTERACTION = 0
_UCRED = struct.Struct("3i")


class Action(StrEnum):
    """polkit action ids (polkit/com.volantvm.volant1.policy)."""

    READ = "com.volantvm.volant1.read"
    MANAGE_VMS = "com.volantvm.volant1.manage-vms"
    MANAGE_PLUGINS = "com.volantvm.volant1.manage-plugins"


Subject = tuple[str, dict[str, tuple[str, Any]]]


class PolkitAuthority(
    DbusInterfaceCommonAsync, interface_name="org.freedesktop.PolicyKit1.Authority"
):
    """The one member of polkit's authority that Volant calls."""

    @dbus_method_async("(sa{sv})sa{ss}us", "(bba{ss})", method_name="CheckAuthorization")
    async def check_authorization(
        self,
        subject: Subject,
        action_id: str,
        details: dict[str, str],
        flags: int,
        cancellation_id: str,
    ) -> tuple[bool, bool, dict[str, str]]:
        raise NotImplementedError


class BusDaemon(DbusInterfaceCommonAsync, interface_name="org.freedesktop.DBus"):
    """The bus itself: who is behind a unique name (used when polkit is absent)."""

    @dbus_method_async("s", "u", method_name="GetConnectionUnixUser")
    async def get_connection_unix_user(self, name: str) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class BusCaller:
    """A D-Bus caller, by its unique name (":1.42")."""

    name: str

    def subject(self) -> Subject:
        return ("system-bus-name", {"name": ("s", self.name)})


@dataclass(frozen=True)
class ProcessCaller:
    """A local process, as SO_PEERCRED reports it; start_time pins the pid against reuse."""

    pid: int
    uid: int
    start_time: int

    @classmethod
    def from_peercred(cls, pid: int, uid: int) -> ProcessCaller:
        return cls(pid=pid, uid=uid, start_time=process_start_time(pid))

    def subject(self) -> Subject:
        return (
            "unix-process",
            {"pid": ("u", self.pid), "start-time": ("t", self.start_time), "uid": ("i", self.uid)},
        )


Caller = BusCaller | ProcessCaller


def socket_peer(sock: socket.socket | None) -> ProcessCaller | None:
    """The process at the other end of a unix socket (SO_PEERCRED); None for other sockets."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return ProcessCaller.from_peercred(pid, uid)


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), as polkit expects it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else 0


class Authorizer:
    """Checks a caller against a polkit action; raises PermissionDenied when it may not."""

    def __init__(self, bus: SdBus | None) -> None:
        self._bus = bus
        self._trusted_uids = frozenset({0, os.geteuid()})

    async def check(self, caller: Caller, action: Action) -> None:
        if self._bus is not None:
            authority = PolkitAuthority.new_proxy(POLKIT_SERVICE, POLKIT_PATH, self._bus)
            try:
                authorized, challenge, _details = await authority.check_authorization(
                    caller.subject(), action.value, {}, NO_INTERACTION, ""
                )
            except (DbusServiceUnknownError, DbusNameHasNoOwnerError):
                log.debug("polkit is not on the bus; deciding by uid")
            except SdBusBaseError as exc:
                log.warning("polkit check of %s for %s failed: %s", caller, action, exc)
                raise PermissionDenied(f"could not check authorisation for {action}") from exc
            else:
                if authorized:
                    return
                raise _denied(action, challenge=challenge)
        await self._check_without_polkit(caller, action)

    async def _check_without_polkit(self, caller: Caller, action: Action) -> None:
        if action is Action.READ:
            return
        if isinstance(caller, ProcessCaller):
            uid = caller.uid
        elif self._bus is not None:
            bus = BusDaemon.new_proxy(DBUS_SERVICE, DBUS_PATH, self._bus)
            uid = await bus.get_connection_unix_user(caller.name)
        else:
            uid = -1
        if uid not in self._trusted_uids:
            raise _denied(action, challenge=False)


def _denied(action: Action, *, challenge: bool) -> PermissionDenied:
    hint = (
        "authentication is required: retry with sudo, or join group volant"
        if challenge
        else "ask an administrator to add you to group volant"
    )
    return PermissionDenied(f"not authorised for {action}", hint=hint)
