"""`volar volumes`: named disks that outlive VMs (create, list, get, resize, delete)."""

from __future__ import annotations

from typing import Any

import click

from volant.cli.completion import complete_volumes
from volant.cli.context import Context, json_option, pass_ctx
from volant.cli.output import emit_json, volume_details, volume_table
from volant.model import InvalidArgument, VolumeMount, format_size, parse_size
from volant.model.volumes import SIZE_RULE, parse_volume_option


def _size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """--size as bytes, checked before volantd is asked (a usage error, exit 2)."""
    try:
        return parse_size(value)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message) from None


def volume_option(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[VolumeMount, ...]:
    """`--volume NAME:/path[:ro]`, repeatable, as VM create takes it."""
    try:
        return tuple(parse_volume_option(value) for value in values)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message) from None


@click.group()
def volumes() -> None:
    """Create and manage volumes: disks that keep their data across VMs."""


@volumes.command("list")
@json_option
@pass_ctx
def volumes_list(ctx: Context, as_json: bool) -> None:
    """List volumes."""
    items = ctx.call(lambda c: c.list_volumes())
    emit_json(items) if as_json else volume_table(items)


@volumes.command("get")
@click.argument("name", shell_complete=complete_volumes)
@json_option
@pass_ctx
def volumes_get(ctx: Context, name: str, as_json: bool) -> None:
    """Show one volume and the VMs it is attached to."""
    volume = ctx.call(lambda c: c.get_volume(name))
    emit_json(volume) if as_json else volume_details(volume)


@volumes.command("create")
@click.argument("name")
@click.option("--size", required=True, callback=_size, help=f"Size: {SIZE_RULE}.")
@json_option
@pass_ctx
def volumes_create(ctx: Context, name: str, size: int, as_json: bool) -> None:
    """Create a volume (a sparse file; formatted ext4 when a VM first starts with it)."""
    volume = ctx.call(lambda c: c.create_volume(name, size))
    _done(volume, as_json, f"volume {name} created ({_human(volume)})")


@volumes.command("resize")
@click.argument("name", shell_complete=complete_volumes)
@click.option("--size", required=True, callback=_size, help=f"New size (grow only): {SIZE_RULE}.")
@json_option
@pass_ctx
def volumes_resize(ctx: Context, name: str, size: int, as_json: bool) -> None:
    """Grow a volume and its file system (no VM may be running with it)."""
    volume = ctx.call(lambda c: c.resize_volume(name, size))
    _done(volume, as_json, f"volume {name} is {_human(volume)}")


@volumes.command("delete")
@click.argument("name", shell_complete=complete_volumes)
@json_option
@pass_ctx
def volumes_delete(ctx: Context, name: str, as_json: bool) -> None:
    """Delete a volume and its data (refused while a VM has it attached)."""
    ctx.call(lambda c: c.delete_volume(name))
    _done({"name": name, "deleted": True}, as_json, f"volume {name} deleted")


def _done(result: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        emit_json(result)
    else:
        click.echo(line)


def _human(volume: dict[str, Any]) -> str:
    return format_size(int(volume.get("size_bytes") or 0))
