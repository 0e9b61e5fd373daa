"""volar entry point: one command group per resource; errors are one line plus a hint."""

from __future__ import annotations

import click

from volant.cli.build import plugins_build, plugins_manifest
from volant.cli.completion import completion
from volant.cli.config import API_ENV, PRECEDENCE, SYSTEM_SOCKET, check_api
from volant.cli.console import console
from volant.cli.context import Context
from volant.cli.cp import vms_cp
from volant.cli.events import events
from volant.cli.exec import exec_command
from volant.cli.group import VolarGroup, show_version
from volant.cli.operations import vms_call, vms_operations
from volant.cli.plugins import plugins
from volant.cli.setup import setup
from volant.cli.system import system
from volant.cli.vms import vms
from volant.cli.volumes import volumes
from volant.client.http import DEFAULT_API


def _api(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_api(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(
    cls=VolarGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=PRECEDENCE,
)
@click.option(
    "--api",
    envvar=API_ENV,
    show_envvar=True,
    callback=_api,
    metavar="URL",
    help=f"volantd API: http://host:port or unix:/path [default: unix:{SYSTEM_SOCKET} when it "
    f"exists, else {DEFAULT_API}].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=show_version,
    help="Show volar's version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, api: str | None, debug: bool) -> None:
    """Operate Volant microVMs."""
    ctx.obj = Context(api=api, debug=debug)


vms.add_command(console)
vms.add_command(vms_cp)
vms.add_command(exec_command)
vms.add_command(vms_operations)
vms.add_command(vms_call)
cli.add_command(vms)
plugins.add_command(plugins_build)
plugins.add_command(plugins_manifest)
cli.add_command(plugins)
cli.add_command(volumes)
cli.add_command(events)
cli.add_command(system)
cli.add_command(setup)
cli.add_command(completion)


def main() -> None:
    cli(prog_name="volar")
