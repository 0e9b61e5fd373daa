"""HostNetwork: the bridge and one tap per VM, made with rtnetlink through pyroute2.

Threading: each operation runs as one blocking function in a worker thread
(`asyncio.to_thread`) with its own short-lived `IPRoute` socket. Nothing is shared between
operations, so no locking is needed, and a caller that is cancelled cannot stop a change half-way:
the thread finishes the operation, including its own rollback.

Namespaces: with `netns="name"` every socket is opened inside that named network namespace
(pyroute2 forks a helper that enters it and hands the socket back), so tests and demos drive
the real code without touching the host's root namespace. `flags=0` makes a missing namespace
an error; pyroute2's default (and its `NetNS` class) would quietly create one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from volant.model import Conflict, Unavailable, VolantError
from volant.network.names import TAP_PREFIX, check_ifname, tap_name

log = logging.getLogger(__name__)

DEFAULT_BRIDGE = "vbr0"
DEFAULT_ADDRESS = IPv4Interface("192.168.127.1/24")

_IFF_UP = 0x1
_TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE: 1 is tun, 2 is tap
# The interface group of an isolated VM's tap. The bridge table `volar setup` writes drops
# forwarding from and to it (volant/network/firewall.py), so an isolated guest reaches no other
# guest at all; bridge port isolation alone would still let it reach non-isolated ones.
ISOLATED_GROUP = 0x766F


def forwarding_enabled(knob: Path = Path("/proc/sys/net/ipv4/ip_forward")) -> bool:
    """True when this network namespace routes IPv4 between interfaces (guests reach out)."""
    try:
        return knob.read_text().strip() == "1"
    except OSError:
        return False


@dataclass(frozen=True)
class BridgeState:
    """The bridge as the kernel has it: kind, the host address, link state and its ports."""

    is_bridge: bool
    has_address: bool
    up: bool
    ports: tuple[str, ...]

    @property
    def ready(self) -> bool:
        """A bridge with the host address, up: what ensure_bridge makes."""
        return self.is_bridge and self.has_address and self.up


@contextmanager
def _host_errors(what: str) -> Iterator[None]:
    """Turn netlink and OS failures into Unavailable, saying what was being done."""
    try:
        yield
    except VolantError:
        raise
    except (NetlinkError, OSError) as err:
        code = getattr(err, "code", None) or getattr(err, "errno", None) or 0
        symbol = errno.errorcode.get(code)
        reason = f"{os.strerror(code)} ({symbol})" if symbol else str(err)
        hint = "volantd needs root or CAP_NET_ADMIN" if code in (errno.EPERM, errno.EACCES) else ""
        raise Unavailable(f"{what}: {reason}", hint=hint) from err


def _kind(link: Any) -> str:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind else ""


def _is_tap(link: Any) -> bool:
    tun_type = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_TUN_TYPE")
    return _kind(link) == "tun" and tun_type == _TUN_TYPE_TAP


def _find(ipr: Any, name: str) -> Any | None:
    """The link message of interface name, or None when there is none."""
    try:
        (link,) = ipr.link("get", ifname=name)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise
    return link


def _get(ipr: Any, name: str) -> Any:
    """The link message of an interface that must exist (one we just created)."""
    link = _find(ipr, name)
    if link is None:
        raise Unavailable(f"interface {name} vanished while it was being set up")
    return link


def _tolerate(code: int, action: Callable[[], object]) -> None:
    """Run a netlink request whose failure with code means the goal is already met."""
    try:
        action()
    except NetlinkError as err:
        if err.code != code:
            raise


class HostNetwork:
    """The Network port: a bridge with the host's address, and taps attached to it."""

    def __init__(
        self,
        bridge: str = DEFAULT_BRIDGE,
        address: IPv4Interface = DEFAULT_ADDRESS,
        *,
        netns: str | None = None,
    ) -> None:
        self.bridge = check_ifname(bridge, "bridge")
        self.address = address
        self.netns = netns

    def _open(self) -> Any:
        if self.netns is None:
            return IPRoute()
        try:
            return IPRoute(netns=self.netns, flags=0)
        except FileNotFoundError as err:
            raise Unavailable(f"network namespace {self.netns!r} does not exist") from err

    async def ensure_bridge(self) -> None:
        """Create the bridge if absent, put the host address on it and bring it up."""
        await asyncio.to_thread(self._ensure_bridge)

    def tap_name(self, vm_name: str) -> str:
        """The tap of vm_name: `vt-` + 10 hex digits of its sha256."""
        return tap_name(vm_name)

    async def create_tap(self, tap: str, vm_name: str, *, isolated: bool = False) -> None:
        """Create (or reuse a left-over) persistent tap, attach it to the bridge, bring it up.

        The interface alias records vm_name. An isolated tap is an isolated bridge port (the
        kernel forwards nothing between two of them) in ISOLATED_GROUP (the bridge table drops
        what it forwards between it and any other tap). A tap this call created is removed
        again when a later step fails.
        """
        check_ifname(tap, "tap")
        await asyncio.to_thread(self._create_tap, tap, vm_name, isolated)

    async def delete_tap(self, tap: str) -> None:
        """Remove the tap; nothing to do when it is already gone."""
        check_ifname(tap, "tap")
        await asyncio.to_thread(self._delete_tap, tap)

    async def inspect_bridge(self) -> BridgeState | None:
        """What the bridge looks like now, or None when there is no interface of its name."""
        return await asyncio.to_thread(self._inspect_bridge)

    async def delete_bridge(self) -> None:
        """Remove the bridge (its ports are detached by the kernel); nothing when it is gone."""
        await asyncio.to_thread(self._delete_bridge)

    async def tap_exists(self, tap: str) -> bool:
        """True when an interface called tap exists."""
        check_ifname(tap, "tap")
        return await asyncio.to_thread(self._tap_exists, tap)

    async def list_taps(self) -> dict[str, str]:
        """Every tap named with Volant's prefix: name -> the VM name its alias records."""
        return await asyncio.to_thread(self._list_taps)

    # -- blocking halves, run in worker threads ----------------------------------------------

    def _list_taps(self) -> dict[str, str]:
        with _host_errors("cannot list the taps"), self._open() as ipr:
            return {
                str(link.get("ifname")): str(link.get("ifalias") or "")
                for link in ipr.get_links()
                if str(link.get("ifname")).startswith(TAP_PREFIX) and _is_tap(link)
            }

    def _ensure_bridge(self) -> None:
        with _host_errors(f"cannot set up bridge {self.bridge}"), self._open() as ipr:
            link = _find(ipr, self.bridge)
            if link is None:
                # Another process may create it between our look-up and our request.
                _tolerate(errno.EEXIST, lambda: ipr.link("add", ifname=self.bridge, kind="bridge"))
                link = _get(ipr, self.bridge)
                log.info("created bridge %s", self.bridge)
            if _kind(link) != "bridge":
                raise Conflict(
                    f"interface {self.bridge} exists but is not a bridge",
                    hint="remove it or configure another network.bridge",
                )
            index = link["index"]
            if not self._has_address(ipr, index):
                _tolerate(
                    errno.EEXIST,
                    lambda: ipr.addr(
                        "add",
                        index=index,
                        address=str(self.address.ip),
                        prefixlen=self.address.network.prefixlen,
                    ),
                )
                log.info("added %s to bridge %s", self.address, self.bridge)
            if not link["flags"] & _IFF_UP:
                ipr.link("set", index=index, state="up")

    def _inspect_bridge(self) -> BridgeState | None:
        with _host_errors(f"cannot look up bridge {self.bridge}"), self._open() as ipr:
            link = _find(ipr, self.bridge)
            if link is None:
                return None
            index = link["index"]
            ports = tuple(
                str(port.get("ifname")) for port in ipr.get_links() if port.get("master") == index
            )
            return BridgeState(
                is_bridge=_kind(link) == "bridge",
                has_address=self._has_address(ipr, index),
                up=bool(link["flags"] & _IFF_UP),
                ports=ports,
            )

    def _delete_bridge(self) -> None:
        with _host_errors(f"cannot delete bridge {self.bridge}"), self._open() as ipr:
            link = _find(ipr, self.bridge)
            if link is None:
                return
            if _kind(link) != "bridge":
                raise Conflict(f"interface {self.bridge} is not a bridge; refusing to delete it")
            _tolerate(errno.ENODEV, lambda: ipr.link("del", index=link["index"]))
            log.info("deleted bridge %s", self.bridge)

    def _has_address(self, ipr: Any, index: int) -> bool:
        wanted = (str(self.address.ip), self.address.network.prefixlen)
        present = {
            (addr.get("address"), addr["prefixlen"]) for addr in ipr.get_addr(index=index, family=2)
        }
        return wanted in present

    def _create_tap(self, tap: str, vm_name: str, isolated: bool) -> None:
        with _host_errors(f"cannot create tap {tap} for VM {vm_name}"), self._open() as ipr:
            bridge = _find(ipr, self.bridge)
            if bridge is None:
                raise Unavailable(
                    f"bridge {self.bridge} does not exist",
                    hint="run `volar setup`, or let volantd manage the bridge",
                )
            link = _find(ipr, tap)
            created = False
            try:
                if link is None:
                    ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                    created = True
                    link = _get(ipr, tap)
                else:
                    _check_reusable(link, tap, vm_name)
                    log.info("reusing tap %s left over by VM %s", tap, vm_name)
                index = link["index"]
                group = ISOLATED_GROUP if isolated else 0
                ipr.link("set", index=index, master=bridge["index"], ifalias=vm_name, group=group)
                # Set either way: a reused tap may carry the flag of an earlier VM of its name.
                ipr.brport("set", index=index, isolated=int(isolated))
                ipr.link("set", index=index, state="up")
            except BaseException:
                if created:
                    _delete_quietly(ipr, tap)
                raise

    def _delete_tap(self, tap: str) -> None:
        with _host_errors(f"cannot delete tap {tap}"), self._open() as ipr:
            link = _find(ipr, tap)
            if link is None:
                return
            if not _is_tap(link):
                raise Conflict(f"interface {tap} is not a tap; refusing to delete it")
            _tolerate(errno.ENODEV, lambda: ipr.link("del", index=link["index"]))
            log.info("deleted tap %s", tap)

    def _tap_exists(self, tap: str) -> bool:
        with _host_errors(f"cannot look up tap {tap}"), self._open() as ipr:
            return _find(ipr, tap) is not None


def _check_reusable(link: Any, tap: str, vm_name: str) -> None:
    """A left-over tap is reused only when it is a tap and no other VM's name is on it."""
    if not _is_tap(link):
        raise Conflict(f"interface {tap} exists but is not a tap")
    alias = link.get("ifalias")
    if alias and alias != vm_name:
        raise Conflict(f"tap {tap} belongs to VM {alias!r}, not {vm_name!r}")


def _delete_quietly(ipr: Any, tap: str) -> None:
    try:
        ipr.link("del", ifname=tap)
    except (NetlinkError, OSError):
        log.exception("could not remove tap %s after a failed create", tap)
