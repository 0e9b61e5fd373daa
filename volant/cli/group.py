"""volar's root command class: how errors end and what --version says."""

from __future__ import annotations

import errno
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

import click

from volant.cli.context import INTERRUPTED, Context, fail


def _version() -> str:
    try:
        return version("volant")
    except PackageNotFoundError:
        return "0+unknown"


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: volar's version, from the installed distribution's metadata."""
    if value and not ctx.resilient_parsing:
        click.echo(f"volar {_version()}")
        ctx.exit()


class UsageError(click.UsageError):
    """A usage error in volar's two lines, the usage itself as the hint (exit status 2)."""

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message(), error.ctx)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"volar: error: {self.message}", err=True)
        if self.ctx is not None:
            usage = " ".join(self.ctx.get_usage().split())
            click.echo(f"hint: {usage}; `{self.ctx.command_path} --help` says more", err=True)


def _two_lines(error: click.UsageError) -> click.UsageError:
    # No arguments at all is a request for help, which click shows in full.
    plain = isinstance(error, click.exceptions.NoArgsIsHelpError | UsageError)
    return error if plain else UsageError(error)


class VolarGroup(click.Group):
    """The root group: usage errors in two lines like every other error (exit 2), an error no
    command reported still as one line (exit 1), Ctrl-C anywhere as exit status 130 instead of
    click's "Aborted!"."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _two_lines(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _two_lines(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            sys.exit(INTERRUPTED)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # click quiets a reader that went away (`volar vms list | head -1`)
            obj = ctx.obj
            if isinstance(obj, Context):
                obj.report()
            fail(
                f"unexpected {type(exc).__name__}: {exc}",
                "this is a bug in volar; --debug shows where it happened",
            )
