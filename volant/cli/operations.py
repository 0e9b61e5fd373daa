"""`volar vms operations` and `volar vms call`: the workload's own API, from its OpenAPI document.

An operation is named by its operationId, or METHOD:/path when the document gives it none (any
operation answers to that form too). `call` goes through the VM's passthrough and prints the
answer (JSON pretty-printed); it exits 1 when the workload answers 400 or more.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from volant.cli.completion import complete_vms
from volant.cli.context import Context, fail, json_option, pass_ctx
from volant.cli.output import emit_json, operation_table
from volant.client.operations import call_operation, vm_operations


def _pairs(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param=param)
        pairs.append((key, rest))
    return pairs


def _body(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """--body as a JSON value: inline, or @FILE (@- for stdin)."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror}", param=param) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param=param) from exc


@click.command("operations")
@click.argument("name", shell_complete=complete_vms)
@json_option
@pass_ctx
def vms_operations(ctx: Context, name: str, as_json: bool) -> None:
    """List the operations of the OpenAPI document of VM NAME's workload."""
    operations = ctx.call(lambda c: vm_operations(c, name))
    if as_json:
        emit_json(operations)
    else:
        operation_table(operations)


@click.command("call")
@click.argument("name", shell_complete=complete_vms)
@click.argument("operation")
@click.option(
    "--param", "params", multiple=True, callback=_pairs, metavar="NAME=VALUE",
    help="A path parameter: fills {NAME} in the operation's path (repeatable).",
)  # fmt: skip
@click.option(
    "--query", "query", multiple=True, callback=_pairs, metavar="NAME=VALUE",
    help="A query parameter (repeatable).",
)  # fmt: skip
@click.option(
    "--body", callback=_body, metavar="JSON|@FILE",
    help="JSON request body, inline or from a file (@- reads stdin).",
)  # fmt: skip
@pass_ctx
def vms_call(
    ctx: Context,
    name: str,
    operation: str,
    params: list[tuple[str, str]],
    query: list[tuple[str, str]],
    body: Any,
) -> None:
    """Call OPERATION (an operationId, or METHOD:/path) of VM NAME's workload.

    Prints the answer, JSON pretty-printed; exits 1 when the workload answers 400 or more.
    """
    reply = ctx.call(
        lambda c: call_operation(c, name, operation, params=dict(params), query=query, body=body)
    )
    if reply.body:
        try:
            emit_json(json.loads(reply.body))
        except ValueError:
            text = reply.body.decode(errors="replace")
            click.echo(text, nl=not text.endswith("\n"))
    if reply.status >= 400:
        fail(
            f"operation {operation!r} of VM {name!r} answered HTTP {reply.status}",
            f"`volar vms logs {name}` shows the workload's output",
        )
