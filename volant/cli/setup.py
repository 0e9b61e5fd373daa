"""`volar setup`: prepare this host for volantd, show the plan, or take it back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from volant.cli.context import Context, fail, json_option, pass_ctx
from volant.cli.output import emit_json
from volant.config import load_config
from volant.model import VolantError

if TYPE_CHECKING:
    from volant.setup import Change

EPILOG = """\b
Steps, each skipped when already in place:
  directories   state, logs, /etc/volant and its trusted-keys.d
  sysctl        net.ipv4.ip_forward=1 now and in /etc/sysctl.d/60-volant.conf
  bridge        network.bridge (vbr0) with network.host_ip, up
  nftables      table inet volant: masquerade network.subnet, forward rules;
                /etc/volant/nftables.conf, loaded again whenever volantd starts
  service       systemctl enable --now volantd.service

What setup made is recorded in <state_dir>/setup.json; --undo removes that and
nothing else. Settings come from volantd's configuration (/etc/volant/volantd.yaml).
"""

PAST = {"create": "created", "keep": "kept", "remove": "removed", "skip": "skipped"}


@click.command(epilog=EPILOG)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--undo", is_flag=True, help="Remove what earlier runs of setup made.")
@click.option("--force", is_flag=True, help="With --undo: remove the bridge even with VMs on it.")
@click.option(
    "--config",
    "configs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="volantd config file to read (repeatable; replaces the default files).",
)
@json_option
@pass_ctx
def setup(
    ctx: Context, dry_run: bool, undo: bool, force: bool, configs: tuple[Path, ...], as_json: bool
) -> None:
    """Prepare this host for volantd: bridge, NAT, forwarding, directories, service."""
    if force and not undo:
        raise click.UsageError("--force goes with --undo")
    if os.geteuid() != 0:
        fail("volar setup changes the host and must run as root", "sudo volar setup")
    # Imported here, not at the top: pyroute2 takes a tenth of a second to load, and every
    # other volar command (shell completion included) does without it.
    from volant.setup import SERVICE_DIRS, host_plan

    try:
        config = load_config(list(configs) or None, env={**os.environ, **SERVICE_DIRS})
        plan = host_plan(config)
        run = plan.undo(dry_run=dry_run, force=force) if undo else plan.apply(dry_run=dry_run)
        changes = asyncio.run(run)
    except VolantError as exc:
        ctx.report()
        fail(str(exc), exc.hint)
    except OSError as exc:
        fail(str(exc))
    if as_json:
        emit_json([{"action": c.action, "what": c.what, "note": c.note} for c in changes])
        return
    _report(changes, dry_run=dry_run)


def _report(changes: list[Change], *, dry_run: bool) -> None:
    if dry_run:
        click.echo("Dry run: nothing was changed. The plan:")
    for change in changes:
        verb = str(change.action) if dry_run else PAST[change.action]
        note = f" ({change.note})" if change.note else ""
        click.echo(f"  {verb:<8} {change.what}{note}")
