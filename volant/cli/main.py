"""volar entry point: one command group per resource; errors are one line plus a hint."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from volant.cli.output import emit_json, vm_details, vm_table
from volant.cli.plugins import plugins
from volant.client import ApiError, VolantClient
from volant.client.http import DEFAULT_API

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    api: str
    debug: bool

    def call(self, fn: Callable[[VolantClient], Awaitable[T]]) -> T:
        async def run() -> T:
            async with VolantClient(self.api) as client:
                return await fn(client)

        try:
            return asyncio.run(run())
        except ApiError as exc:
            if self.debug:
                traceback.print_exc()
            click.echo(f"volar: error: {exc.detail}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(1)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


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


@cli.group()
def vms() -> None:
    """Create, inspect and control VMs."""


@vms.command("list")
@json_option
@pass_ctx
def vms_list(ctx: Context, as_json: bool) -> None:
    """List VMs."""
    items = ctx.call(lambda c: c.list_vms())
    emit_json(items) if as_json else vm_table(items)


@vms.command("get")
@click.argument("name")
@json_option
@pass_ctx
def vms_get(ctx: Context, name: str, as_json: bool) -> None:
    """Show one VM."""
    vm = ctx.call(lambda c: c.get_vm(name))
    emit_json(vm) if as_json else vm_details(vm)


@vms.command("create")
@click.argument("name")
@click.option("--plugin", default="", help="Plugin the VM runs.")
@click.option("--cpu", "cpu_cores", type=int, help="vCPUs (default from the daemon).")
@click.option("--memory", "memory_mb", type=int, help="Guest RAM in MiB.")
@click.option("--kernel-args", default="", help="Extra kernel command line arguments.")
@json_option
@pass_ctx
def vms_create(
    ctx: Context,
    name: str,
    plugin: str,
    cpu_cores: int | None,
    memory_mb: int | None,
    kernel_args: str,
    as_json: bool,
) -> None:
    """Create and boot a VM."""
    spec: dict[str, Any] = {"name": name, "plugin": plugin, "kernel_args": kernel_args}
    if cpu_cores is not None:
        spec["cpu_cores"] = cpu_cores
    if memory_mb is not None:
        spec["memory_mb"] = memory_mb
    vm = ctx.call(lambda c: c.create_vm(spec))
    emit_json(vm) if as_json else click.echo(
        f"VM {vm['name']} is {vm['status']} at {vm['ip_address'] or '-'}"
    )


def _verb(name: str, help_text: str, call: Callable[[VolantClient, str], Awaitable[Any]]) -> None:
    @vms.command(name, help=help_text)
    @click.argument("vm")
    @json_option
    @pass_ctx
    def command(ctx: Context, vm: str, as_json: bool) -> None:
        result = ctx.call(lambda c: call(c, vm))
        if as_json:
            emit_json(result if result is not None else {"name": vm, "deleted": True})
        elif result is None:
            click.echo(f"VM {vm} deleted")
        else:
            click.echo(f"VM {result['name']} is {result['status']}")


_verb("delete", "Delete a VM (kills it if running).", lambda c, vm: c.delete_vm(vm))
_verb("start", "Start a stopped VM.", lambda c, vm: c.start_vm(vm))
_verb("stop", "Power a VM off (gracefully, then forcibly).", lambda c, vm: c.stop_vm(vm))
_verb("restart", "Stop a VM if it runs, then start it.", lambda c, vm: c.restart_vm(vm))


cli.add_command(plugins)


def main() -> None:
    cli(prog_name="volar")
