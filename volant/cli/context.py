"""What every daemon-facing command shares: the API address, error reporting, --json."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import click

from volant.client import ApiError, VolantClient

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """The root group's options; `call` runs one client coroutine and reports its errors."""

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
            detail = exc.detail
            if exc.field and exc.field not in detail:
                detail = f"{detail} (field {exc.field})"
            fail(detail, exc.hint)
        except KeyboardInterrupt:
            # Ctrl-C ends a follow or a long wait; the shell already showed ^C.
            sys.exit(130)


def fail(message: str, hint: str = "") -> NoReturn:
    """Report an error in one line (plus a hint) and exit with status 1."""
    click.echo(f"volar: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(1)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
