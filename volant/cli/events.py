"""`volar events`: follow the daemon's VM lifecycle events live."""

from __future__ import annotations

import json
from typing import Any

import click

from volant.cli.completion import complete_vms
from volant.cli.context import Context, pass_ctx
from volant.cli.output import event_line
from volant.client import VolantClient
from volant.client.follow import follow_events

PAGE = 1000  # events per request when printing the kept ones


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
@click.option(
    "--no-follow",
    is_flag=True,
    help="Print the kept events (after --since, else all) and exit instead of following.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@pass_ctx
def events(
    ctx: Context,
    vm: str | None,
    types: list[str],
    since: int | None,
    no_follow: bool,
    as_json: bool,
) -> None:
    """Follow VM lifecycle events as they happen, until Ctrl-C.

    One `time type vm details` line per event. When the stream drops (volantd restarting, or
    this terminal reading too slowly) volar reconnects and the daemon replays what was missed.
    """

    def show(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, sort_keys=True) if as_json else event_line(event))

    async def follow(client: VolantClient) -> None:
        async for event in follow_events(client, vm=vm, types=types, since=since, on_retry=_note):
            show(event)

    async def kept(client: VolantClient) -> None:
        after = since or 0
        while page := await client.list_events(after, vm, types, limit=PAGE):
            for event in page:
                show(event)
            after = int(page[-1]["id"])

    ctx.call(kept if no_follow else follow)
