"""The setup steps that change the running host: the bridge, the nftables table, the service."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from volant.model import Conflict, Unavailable
from volant.network import HostNetwork
from volant.setup.nft import FAMILIES, TABLE, listed_tables, ruleset_file, setup_chains
from volant.setup.steps import read_text, write_file

UNIT = "volantd.service"
DNSMASQ_UNIT = "volant-dnsmasq.service"


async def command(*argv: str, check: bool = True) -> tuple[int, str]:
    """Run a host tool; its output, or Unavailable with what it said on failure."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise Unavailable(f"{argv[0]} is not installed", hint=_package_hint(argv[0])) from exc
    out, err = await proc.communicate()
    code = proc.returncode or 0
    if check and code != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise Unavailable(f"`{' '.join(argv)}` failed: {said[-1] if said else f'exit {code}'}")
    return code, out.decode(errors="replace")


def _package_hint(tool: str) -> str:
    return {"nft": "apt install nftables", "systemctl": "apt install systemd"}.get(tool, "")


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 of this host (or of this container)."""
    return Path("/run/systemd/system").is_dir()


class BridgeStep:
    """The bridge with the host address (the guests' gateway), up."""

    key = "bridge"

    def __init__(self, network: HostNetwork) -> None:
        self.network = network

    def describe(self) -> str:
        return f"bridge {self.network.bridge} {self.network.address}"

    async def preflight(self) -> None:
        state = await self.network.inspect_bridge()
        if state is not None and not state.is_bridge:
            raise Conflict(
                f"interface {self.network.bridge} exists but is not a bridge",
                hint="remove it, or set network.bridge in /etc/volant/volantd.yaml",
            )

    async def in_place(self) -> bool:
        state = await self.network.inspect_bridge()
        return state is not None and state.ready

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        if not made.get("created") or force:
            return
        state = await self.network.inspect_bridge()
        if state is not None and state.ports:
            raise Conflict(
                f"VMs are still attached to bridge {self.network.bridge} "
                f"({', '.join(state.ports)})",
                hint="delete them first (volar vms list), or pass --force",
            )

    async def apply(self) -> dict[str, Any]:
        existed = await self.network.inspect_bridge() is not None
        await self.network.ensure_bridge()
        return {"created": not existed}

    async def revert(self, made: dict[str, Any]) -> str:
        if not made.get("created"):
            return "kept: it existed before setup (setup only added its address)"
        await self.network.delete_bridge()
        return ""


class NatStep:
    """The nftables tables, their file and the unit drop-in that loads it whenever volantd
    starts."""

    key = "nftables"

    def __init__(
        self,
        bridge: str,
        subnet: IPv4Network,
        rules: Path,
        dropin: Path,
        *,
        api_port: int | None = None,
    ) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.rules = rules
        self.dropin = dropin
        self.api_port = api_port

    def describe(self) -> str:
        api = f", API port {self.api_port} closed to it" if self.api_port is not None else ""
        return (
            f"nftables tables inet and bridge {TABLE}: masquerade {self.subnet}, forward "
            f"{self.bridge}{api}, guests kept from each other's agents ({self.rules})"
        )

    def _ruleset(self) -> str:
        return ruleset_file(self.bridge, self.subnet, self.api_port)

    def _dropin_text(self) -> str:
        # `+`: nft runs with full privileges, outside the service's sandbox.
        return (
            "# Written by `volar setup`: restore the nftables tables whenever volantd starts.\n"
            f"[Service]\nExecStartPre=+/usr/sbin/nft -f {self.rules}\n"
        )

    async def preflight(self) -> None:
        if shutil.which("nft") is None:
            raise Unavailable("nft is not installed", hint=_package_hint("nft"))

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        pass

    async def in_place(self) -> bool:
        if read_text(self.rules) != self._ruleset():
            return False
        if read_text(self.dropin) != self._dropin_text():
            return False
        for family, wanted in listed_tables(self.bridge, self.subnet, self.api_port).items():
            code, listed = await command("nft", "list", "table", family, TABLE, check=False)
            # volantd's chains for published ports are no drift (it puts them back at start).
            if code != 0 or (setup_chains(listed) if family == "inet" else listed) != wanted:
                return False
        return True

    async def apply(self) -> dict[str, Any]:
        write_file(self.rules, self._ruleset())
        write_file(self.dropin, self._dropin_text())
        await command("nft", "-f", str(self.rules))
        await daemon_reload()
        return {}

    async def revert(self, made: dict[str, Any]) -> str:
        for family in FAMILIES:
            await command("nft", "delete", "table", family, TABLE, check=False)
        self.rules.unlink(missing_ok=True)
        self.dropin.unlink(missing_ok=True)
        # Other drop-ins may live there too, or it is gone already.
        with contextlib.suppress(OSError):
            self.dropin.parent.rmdir()
        await daemon_reload()
        return ""


async def daemon_reload() -> None:
    if systemd_running():
        await command("systemctl", "daemon-reload")


class ServiceStep:
    """volantd.service enabled and running."""

    key = "service"

    def describe(self) -> str:
        return f"systemctl enable --now {UNIT}"

    async def _state(self) -> tuple[bool, bool]:
        enabled, _ = await command("systemctl", "is-enabled", "--quiet", UNIT, check=False)
        active, _ = await command("systemctl", "is-active", "--quiet", UNIT, check=False)
        return enabled == 0, active == 0

    async def preflight(self) -> None:
        _, out = await command("systemctl", "show", "--property=LoadState", "--value", UNIT)
        if out.strip() != "loaded":
            raise Unavailable(
                f"{UNIT} is not installed (systemd says {out.strip() or 'nothing'})",
                hint="install the volant package: apt install ./volant_*.deb",
            )

    async def preflight_revert(self, made: dict[str, Any], *, force: bool) -> None:
        pass

    async def in_place(self) -> bool:
        return await self._state() == (True, True)

    async def apply(self) -> dict[str, Any]:
        enabled, active = await self._state()
        await command("systemctl", "enable", "--now", "--quiet", UNIT)
        return {"was_enabled": enabled, "was_active": active}

    async def revert(self, made: dict[str, Any]) -> str:
        if not made.get("was_enabled"):
            await command("systemctl", "disable", "--quiet", UNIT)
        if not made.get("was_active"):
            # VMs keep running in their own scopes; volantd re-adopts them when it starts again.
            await command("systemctl", "stop", UNIT)
            # Its dnsmasq outlives it on purpose (guests keep their DNS over a restart); the
            # bridge it serves goes with the undo, so it goes too (absent: nothing to stop).
            await command("systemctl", "stop", DNSMASQ_UNIT, check=False)
        return ""
