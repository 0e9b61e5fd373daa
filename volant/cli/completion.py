"""Shell completion: `volar completion SHELL` prints click's script, and the callbacks below
complete VM and plugin names by asking volantd.

A completion runs on every Tab press, so it asks quickly (TIMEOUT) and stays silent: whatever
goes wrong (no daemon, a broken config file, a refused request) completes nothing rather than
printing into the operator's command line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from volant.cli.config import resolve
from volant.client import VolantClient

PROG = "volar"
COMPLETE_VAR = "_VOLAR_COMPLETE"  # what click derives from PROG; the scripts set it
SHELLS = ("bash", "zsh", "fish")
TIMEOUT = 1.0
MAX_NAMES = 500

PLACES = """\b
Load it into the running shell:
  bash, zsh:  eval "$(volar completion bash)"   (or zsh)
  fish:       volar completion fish | source
Or install it for new shells:
  bash:  volar completion bash > ~/.local/share/bash-completion/completions/volar
  zsh:   volar completion zsh > ~/.zfunc/_volar
         (and `fpath+=~/.zfunc` before `compinit` in ~/.zshrc)
  fish:  volar completion fish > ~/.config/fish/completions/volar.fish
Names of VMs and plugins complete from volantd (the same --api, environment and config
files as any command)."""


@click.command("completion", epilog=PLACES)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    The same script as `_VOLAR_COMPLETE=SHELL_source volar` prints.
    """
    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # SHELLS are click's own
    click.echo(cls(root, {}, PROG, COMPLETE_VAR).source(), nl=False)  # as click prints it


def _ask(
    ctx: click.Context, fetch: Callable[[VolantClient], Awaitable[list[CompletionItem]]]
) -> list[CompletionItem]:
    """fetch's items from the daemon the command line names; [] on any failure, silently."""
    try:
        api = ctx.find_root().params.get("api")
        settings = resolve(api if isinstance(api, str) else None, os.environ)

        async def run() -> list[CompletionItem]:
            async with (
                asyncio.timeout(TIMEOUT),
                VolantClient(settings.api, timeout=TIMEOUT, api_key=settings.api_key) as client,
            ):
                return await fetch(client)

        return asyncio.run(run())
    except Exception:  # a completion must never print: nothing is the answer
        return []


def complete_vms(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Names of the daemon's VMs that start with incomplete (their status as help)."""

    async def fetch(client: VolantClient) -> list[CompletionItem]:
        vms = await client.list_vms(prefix=incomplete, limit=MAX_NAMES)
        return [CompletionItem(vm["name"], help=vm.get("status")) for vm in vms]

    return _ask(ctx, fetch)


def complete_plugins(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Names of the installed plugins that start with incomplete (their version as help)."""

    async def fetch(client: VolantClient) -> list[CompletionItem]:
        plugins = await client.list_plugins()
        return [
            CompletionItem(p["name"], help=p.get("version"))
            for p in plugins
            if str(p.get("name", "")).startswith(incomplete)
        ]

    return _ask(ctx, fetch)


def complete_volumes(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Names of the volumes that start with incomplete (the VM using one as help)."""

    async def fetch(client: VolantClient) -> list[CompletionItem]:
        volumes = await client.list_volumes()
        return [
            CompletionItem(v["name"], help=v.get("in_use_by") or "")
            for v in volumes
            if str(v.get("name", "")).startswith(incomplete)
        ]

    return _ask(ctx, fetch)


def complete_files(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The shell's own file name completion (for an argument that may also be a URL)."""
    return [CompletionItem(incomplete, type="file")]
