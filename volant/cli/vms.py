"""`volar vms`: create, inspect and control VMs, and reach their workloads."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from volant.cli.completion import complete_plugins, complete_vms
from volant.cli.context import Context, fail, json_option, pass_ctx
from volant.cli.output import emit_json, log_line, vm_details, vm_table
from volant.cli.progress import Boot, boot, final_line
from volant.cli.volumes import volume_option
from volant.client import VolantClient
from volant.model import InvalidArgument, PortMapping, VolumeMount, validate_publish
from volant.model.validate import NAME_RE, NAME_RULE

FAILED = frozenset({"error", "crashed", "deleted"})
wait_option = click.option(
    "--wait/--no-wait",
    default=None,
    help="Wait until the VM's workload is healthy when its plugin has a health check "
    "[default: wait, except with --json].",
)


@click.group()
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
@click.argument("name", shell_complete=complete_vms)
@json_option
@pass_ctx
def vms_get(ctx: Context, name: str, as_json: bool) -> None:
    """Show one VM."""
    vm = ctx.call(lambda c: c.get_vm(name))
    emit_json(vm) if as_json else vm_details(vm)


def _new_name(_ctx: click.Context, _param: click.Parameter, name: str) -> str:
    """A new VM's name, checked before volantd is asked (a usage error, exit 2)."""
    if not NAME_RE.fullmatch(name):
        raise click.BadParameter(f"{name!r} is not {NAME_RULE}")
    return name


def _publish_option(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[PortMapping, ...]:
    """`--publish [ADDR:]HOST_PORT:VM_PORT[/tcp|udp]`, repeatable."""
    try:
        return validate_publish(values, "--publish")
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message) from None


@vms.command("create")
@click.argument("name", callback=_new_name)
@click.option("--plugin", default="", shell_complete=complete_plugins, help="Plugin the VM runs.")
@click.option("--cpu", "cpu_cores", type=int, help="vCPUs (default from the daemon).")
@click.option("--memory", "memory_mb", type=int, help="Guest RAM in MiB.")
@click.option("--kernel-args", default="", help="Extra kernel command line arguments.")
@click.option(
    "--isolated",
    is_flag=True,
    help="Cut the VM off from every other guest (it still reaches the host and beyond).",
)
@click.option(
    "--ephemeral",
    is_flag=True,
    help="A rootfs plugin's VM keeps its writes in memory (lost at stop), not on its own disk.",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    callback=volume_option,
    metavar="NAME:/PATH[:ro]",
    help="Mount a volume in the guest (repeatable); `volar volumes create` makes one.",
)
@click.option(
    "--publish",
    "-p",
    "publish",
    multiple=True,
    callback=_publish_option,
    metavar="[ADDR:]HOST_PORT:VM_PORT[/tcp|udp]",
    help="Forward a host port to the VM while it runs (repeatable); replaces the plugin's "
    "network.publish.",
)
@wait_option
@json_option
@pass_ctx
def vms_create(
    ctx: Context,
    name: str,
    plugin: str,
    cpu_cores: int | None,
    memory_mb: int | None,
    kernel_args: str,
    isolated: bool,
    ephemeral: bool,
    volumes: tuple[VolumeMount, ...],
    publish: tuple[PortMapping, ...],
    wait: bool | None,
    as_json: bool,
) -> None:
    """Create and boot a VM.

    On a terminal a status line follows the boot; then one line says how it ended, e.g.
    `VM web is running at 192.168.127.2 (4.1 s)`.
    """
    spec: dict[str, Any] = {"name": name, "plugin": plugin, "kernel_args": kernel_args}
    if cpu_cores is not None:
        spec["cpu_cores"] = cpu_cores
    if memory_mb is not None:
        spec["memory_mb"] = memory_mb
    if isolated:
        spec["isolated"] = True
    if ephemeral:
        spec["ephemeral"] = True
    if volumes:
        spec["volumes"] = [v.to_dict() for v in volumes]
    if publish:
        spec["publish"] = [str(mapping) for mapping in publish]
    _boot(ctx, Boot(name, "creating", _waits(wait, as_json)), as_json, lambda c: c.create_vm(spec))


def _waits(wait: bool | None, as_json: bool) -> bool:
    return (not as_json) if wait is None else wait


def _boot(
    ctx: Context,
    job: Boot,
    as_json: bool,
    call: Callable[[VolantClient], Awaitable[dict[str, Any]]],
) -> None:
    """Run a create, start or restart with its progress; exit 1 when the VM did not boot."""
    vm, seconds = ctx.call(lambda c: boot(c, job, lambda: call(c), show=not as_json))
    if as_json:
        emit_json(vm)
    else:
        click.echo(final_line(vm, seconds))
    if vm.get("status") in FAILED:
        fail(
            f"VM {job.name} did not boot: {vm.get('status_reason') or vm.get('status')}",
            f"`volar vms console {job.name} --log` shows its boot, "
            f"`volar vms logs {job.name}` its workload",
        )


def _booting(
    name: str, doing: str, help_text: str, call: Callable[[VolantClient, str], Any]
) -> None:
    @vms.command(name, help=help_text)
    @click.argument("vm", shell_complete=complete_vms)
    @wait_option
    @json_option
    @pass_ctx
    def command(ctx: Context, vm: str, wait: bool | None, as_json: bool) -> None:
        _boot(ctx, Boot(vm, doing, _waits(wait, as_json)), as_json, lambda c: call(c, vm))


def _verb(name: str, help_text: str, call: Callable[[VolantClient, str], Awaitable[Any]]) -> None:
    @vms.command(name, help=help_text)
    @click.argument("vm", shell_complete=complete_vms)
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
_booting("start", "starting", "Start a stopped VM.", lambda c, vm: c.start_vm(vm))
_verb("stop", "Power a VM off (gracefully, then forcibly).", lambda c, vm: c.stop_vm(vm))
_booting(
    "restart", "restarting", "Stop a VM if it runs, then start it.", lambda c, vm: c.restart_vm(vm)
)


@vms.command("logs")
@click.argument("name", shell_complete=complete_vms)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    help="How many recent lines (default from the daemon).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one object per line with --follow)."
)
@pass_ctx
def vms_logs(ctx: Context, name: str, follow: bool, limit: int | None, as_json: bool) -> None:
    """Print a VM workload's recent output.

    One `ts stream line` per line of the workload's stdout and stderr, as the guest agent
    recorded them.
    """
    if not follow:
        lines = ctx.call(lambda c: c.vm_logs(name, limit))
        if as_json:
            emit_json(lines)
        else:
            for line in lines:
                click.echo(log_line(line))
        return

    async def stream(client: VolantClient) -> None:
        async for line in client.follow_vm_logs(name, limit):
            click.echo(json.dumps(line, sort_keys=True) if as_json else log_line(line))

    ctx.call(stream)


def _read_data(_ctx: click.Context, _param: click.Parameter, value: str | None) -> bytes | None:
    """--data as the bytes to send: inline JSON, or @FILE (@- for stdin) holding JSON."""
    if value is None:
        return None
    if value.startswith("@"):
        source = value[1:]
        try:
            raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror}") from exc
    else:
        raw = value.encode()
    try:
        json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc
    return raw


@vms.command("action")
@click.argument("name", shell_complete=complete_vms)
@click.argument("action")
@click.option(
    "--data",
    "-d",
    callback=_read_data,
    metavar="JSON|@FILE",
    help="JSON request body, inline or from a file (@- reads stdin).",
)
@pass_ctx
def vms_action(ctx: Context, name: str, action: str, data: bytes | None) -> None:
    """Run a plugin action on a VM.

    Prints the workload's answer to ACTION on VM NAME; exits 1 when it is not a success.
    """
    reply = ctx.call(lambda c: c.vm_action(name, action, data))
    if reply.body:
        click.echo(reply.body, nl=not reply.body.endswith(b"\n"))
    if reply.status >= 400:
        fail(
            f"action {action!r} on VM {name!r} answered HTTP {reply.status}",
            f"`volar vms logs {name}` shows the workload's output",
        )


@vms.command("openapi")
@click.argument("name", shell_complete=complete_vms)
@pass_ctx
def vms_openapi(ctx: Context, name: str) -> None:
    """Print the OpenAPI document of a VM's plugin."""
    text = ctx.call(lambda c: c.vm_openapi(name))
    try:
        document = json.loads(text)
    except ValueError:
        click.echo(text, nl=not text.endswith("\n"))  # YAML, or text as the plugin wrote it
    else:
        emit_json(document)
