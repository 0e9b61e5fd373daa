"""volar entry point: one command group per resource; errors are one line plus a hint."""

from __future__ import annotations

import click

from volant.cli.console import console
from volant.cli.context import Context
from volant.cli.events import events
from volant.cli.plugins import plugins
from volant.cli.setup import setup
from volant.cli.vms import vms
from volant.client.http import DEFAULT_API


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api",
    envvar="VOLANT_API_BASE",
    default=DEFAULT_API,
    show_default=True,
    help="volantd API: http://host:port or unix:/path (env VOLANT_API_BASE).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, api: str, debug: bool) -> None:
    """Operate Volant microVMs."""
    ctx.obj = Context(api=api, debug=debug)


vms.add_command(console)
cli.add_command(vms)
cli.add_command(plugins)
cli.add_command(events)
cli.add_command(setup)


def main() -> None:
    cli(prog_name="volar")
