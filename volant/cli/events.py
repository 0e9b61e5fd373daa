"""`volar events`: follow the daemon's VM lifecycle events live."""

from __future__ import annotations

import json

import click

from volant.cli.completion import complete_vms
from volant.cli.context import Context, pass_ctx
from volant.cli.output import event_line
from volant.client import VolantClient
from volant.client.follow import follow_events


def _types(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """--type given several times or comma-separated, in any case."""
    return [name.strip().upper() for value in values for name in value.split(",") if name.strip()]


def _note(reason: str, position: str, delay: float) -> None:
    where = f"after event {position}" if position else "from now"
    click.echo(f"volar: {reason}; reconnecting {where} in {delay:g}s", err=True)


@click.command("events")
@click.option("--vm", metavar="NAME", shell_complete=complete_vms, help="Only events of this VM.")
@click.option(
    "--type",
    "types",
    multiple=True,
    callback=_types,
    metavar="TYPE",
    help="Only events of this type (VM_CREATED, VM_RUNNING, ...); repeat or comma-separate.",
)
@click.option(
    "--since",
    type=click.IntRange(min=0),
    metavar="ID",
    help="First replay the kept events after this id (0: all of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@pass_ctx
def events(
    ctx: Context, vm: str | None, types: list[str], since: int | None, as_json: bool
) -> None:
    """Follow VM lifecycle events as they happen, until Ctrl-C.

    One `time type vm details` line per event. When the stream drops (volantd restarting, or
    this terminal reading too slowly) volar reconnects and the daemon replays what was missed.
    """

    async def follow(client: VolantClient) -> None:
        async for event in follow_events(client, vm=vm, types=types, since=since, on_retry=_note):
            click.echo(json.dumps(event, sort_keys=True) if as_json else event_line(event))

    ctx.call(follow)
