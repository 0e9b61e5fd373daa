"""What every daemon-facing command shares: the API address and key, error reporting, --json."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import click

from volant.cli.config import ConfigError, Settings, resolve
from volant.client import ApiError, VolantClient

T = TypeVar("T")
INTERRUPTED = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


@dataclass(frozen=True)
class Context:
    """The root group's options; `call` runs one client coroutine and reports its errors.

    api is --api (or $VOLANT_API_BASE) when given; the config files are read only by commands
    that talk to the daemon, the first time they need to.
    """

    api: str | None
    debug: bool

    @functools.cached_property
    def settings(self) -> Settings:
        """Where the daemon is and the key to send; exits 1 when a config file is unusable."""
        try:
            settings = resolve(self.api, os.environ)
        except ConfigError as exc:
            self.report()
            fail(exc.message, exc.hint)
        for warning in settings.warnings:
            click.echo(f"volar: warning: {warning}", err=True)
        return settings

    def client(self) -> VolantClient:
        """A client for the daemon the settings name (use it as an async context manager)."""
        return VolantClient(self.settings.api, api_key=self.settings.api_key)

    def call(self, fn: Callable[[VolantClient], Awaitable[T]]) -> T:
        self.settings  # noqa: B018 -- config errors and warnings come before any connection

        async def run() -> T:
            async with self.client() as connected:
                return await fn(connected)

        try:
            return asyncio.run(run())
        except ApiError as exc:
            self.report()
            detail = exc.detail
            if exc.field and exc.field not in detail:
                detail = f"{detail} (field {exc.field})"
            fail(detail, exc.hint)
        except KeyboardInterrupt:
            # Ctrl-C ends a follow or a long wait; the shell already showed ^C.
            sys.exit(INTERRUPTED)

    def report(self) -> None:
        """With --debug, the traceback of the exception being handled."""
        if self.debug:
            traceback.print_exc()


def fail(message: str, hint: str = "") -> NoReturn:
    """Report an error in one line (plus a hint) and exit with status 1."""
    click.echo(f"volar: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(1)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
