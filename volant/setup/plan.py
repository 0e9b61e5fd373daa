"""Run the setup steps in order (or their undo in reverse), recording what each one made."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from volant.config import Config
from volant.network import HostNetwork
from volant.setup.host import BridgeStep, NatStep, ServiceStep, systemd_running
from volant.setup.record import Record
from volant.setup.steps import DirectoryStep, ForwardingStep, Step

log = logging.getLogger(__name__)

# Where the system service keeps its state and runtime files (StateDirectory=volant, ...).
SERVICE_DIRS = {"STATE_DIRECTORY": "/var/lib/volant", "RUNTIME_DIRECTORY": "/run/volant"}


class Action(StrEnum):
    CREATE = "create"
    KEEP = "keep"
    REMOVE = "remove"
    SKIP = "skip"


@dataclass(frozen=True)
class Change:
    """One line of setup's report: what a step did (or, in a dry run, would do)."""

    action: Action
    what: str
    note: str = ""


@dataclass(frozen=True)
class SetupPlan:
    """The steps for this host, in the order they are made; undo goes in reverse."""

    steps: Sequence[Step]
    record: Record
    skipped: Sequence[Change] = ()
    """Steps this host cannot take, reported after the others."""

    async def apply(self, *, dry_run: bool) -> list[Change]:
        for step in self.steps:
            await step.preflight()
        changes: list[Change] = []
        made_now: list[Step] = []
        for step in self.steps:
            if await step.in_place():
                changes.append(Change(Action.KEEP, step.describe()))
                continue
            changes.append(Change(Action.CREATE, step.describe()))
            if dry_run:
                continue
            try:
                made = await step.apply()
            except BaseException:
                await self._roll_back(made_now)
                raise
            made_now.append(step)
            # A step run again after drift keeps what the first run made (say, that the
            # bridge did not exist before setup).
            self.record.note(step.key, {**made, **self.record.made.get(step.key, {})})
        return [*changes, *self.skipped]

    async def _roll_back(self, steps: list[Step]) -> None:
        """Undo this run's steps so a failure half-way leaves the host as it found it."""
        for step in reversed(steps):
            try:
                await self._revert(step, self.record.made.get(step.key, {}))
            except Exception:
                log.exception("could not undo %s after a failed setup", step.describe())

    async def _revert(self, step: Step, made: dict[str, Any]) -> str:
        # Forget first: the record may be the last file in a directory being removed.
        self.record.forget(step.key)
        try:
            return await step.revert(made)
        except BaseException:
            self.record.note(step.key, made)
            raise

    async def undo(self, *, dry_run: bool, force: bool) -> list[Change]:
        for step in self.steps:
            if step.key in self.record.made:
                await step.preflight_revert(self.record.made[step.key], force=force)
        changes: list[Change] = []
        for step in reversed(self.steps):
            made = self.record.made.get(step.key)
            if made is None:
                changes.append(Change(Action.KEEP, step.describe(), "not made by setup"))
                continue
            if dry_run:
                changes.append(Change(Action.REMOVE, step.describe()))
                continue
            note = await self._revert(step, made)
            changes.append(Change(Action.KEEP if note else Action.REMOVE, step.describe(), note))
        return [*changes, *self.skipped]


def host_plan(config: Config, root: Path = Path("/")) -> SetupPlan:
    """The steps that prepare this host for volantd as configured.

    root prefixes every file path (tests run the file steps in a temporary tree).
    """
    subnet = IPv4Network(config.network_subnet)
    network = HostNetwork(
        config.network_bridge, IPv4Interface(f"{config.network_host_ip}/{subnet.prefixlen}")
    )
    etc = root / "etc"
    state_dir = root / str(config.state_dir).lstrip("/")
    dirs = [
        # First: the record of what setup made lives there.
        DirectoryStep(state_dir, 0o750),
        DirectoryStep(etc / "volant", 0o755),
        DirectoryStep(etc / "volant/volantd.yaml.d", 0o755),
        DirectoryStep(root / str(config.plugins_trusted_keys_dir).lstrip("/"), 0o755),
        DirectoryStep(root / "var/log/volant", 0o750),
    ]
    steps: list[Step] = [
        *_unique(dirs),
        ForwardingStep(etc / "sysctl.d/60-volant.conf", root / "proc/sys/net/ipv4/ip_forward"),
        BridgeStep(network),
        NatStep(
            network.bridge,
            subnet,
            rules=etc / "volant/nftables.conf",
            dropin=etc / "systemd/system/volantd.service.d/50-volant-nat.conf",
            api_port=config.api_port,
        ),
    ]
    skipped: list[Change] = []
    service = ServiceStep()
    if systemd_running():
        steps.append(service)
    else:
        note = "systemd is not running here: start volantd yourself"
        skipped.append(Change(Action.SKIP, service.describe(), note))
    record = Record.load(state_dir / "setup.json")
    return SetupPlan(steps, record, skipped)


def _unique(dirs: list[DirectoryStep]) -> list[DirectoryStep]:
    unique: dict[Path, DirectoryStep] = {}
    for step in dirs:
        unique.setdefault(step.path, step)
    return list(unique.values())
