"""`volar vms exec`: run a command in a VM's workload, like `docker exec` and `incus exec`.

Output streams as it comes (stdout to stdout, stderr to stderr) and volar exits with the
command's exit code (128+N for signal N, 124 when --timeout killed it, 127 when it was not
found). Input from a pipe or file is sent and closed at its end; from a terminal only with -i.
With -t the command gets a pty in the guest, this terminal goes raw for the while, and window
size changes follow it (SIGWINCH).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click

from volant.cli.completion import complete_vms
from volant.cli.context import Context, pass_ctx
from volant.cli.terminal import Input, raw_mode
from volant.client import VolantClient
from volant.client.exec import ExecStream
from volant.model.execs import EXIT_TIMED_OUT, MAX_TIMEOUT

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Options:
    interactive: bool  # forward stdin even when it is a terminal
    tty: bool
    raw: bool  # stdin is a terminal in raw mode while the command runs


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
        env[key] = value
    return env


def terminal_size() -> tuple[int, int]:
    """(rows, cols) of this terminal; 24x80 when there is none."""
    for fd in (sys.stdout.fileno(), sys.stdin.fileno()):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines or 24, size.columns or 80
    return 24, 80


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete_vms)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Send this terminal's input.")
@click.option("-t", "--tty", is_flag=True, help="Run the command on a pty in the guest.")
@click.option("-e", "--env", multiple=True, metavar="NAME=VALUE", help="Set a variable (repeat).")
@click.option("-w", "--workdir", default="", help="Directory in the workload's root.")
@click.option("-u", "--user", default="", help="User in the image (default: the workload's).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, MAX_TIMEOUT),
    default=0,
    help="Kill the command after this many seconds (exit code 124); 0: never.",
)
@pass_ctx
def exec_command(
    ctx: Context,
    name: str,
    argv: tuple[str, ...],
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    workdir: str,
    user: str,
    timeout: float,
) -> None:
    """Run a command in a VM's workload: `volar vms exec web -- ls -l /`.

    It runs in the workload's root filesystem, as its user, with its environment. Use `--`
    before the command when it has options of its own.
    """
    command: dict[str, Any] = {
        "argv": list(argv),
        "env": parse_env(env),
        "workdir": workdir,
        "user": user,
        "timeout": timeout,
        "tty": tty,
    }
    if tty:
        command["rows"], command["cols"] = terminal_size()
    options = Options(interactive, tty, tty and sys.stdin.isatty())
    end = ctx.call(lambda c: _run(c, name, command, options))
    if end is None:
        click.echo("volar: error: the connection to the command was lost", err=True)
        sys.exit(255)
    code = int(end.get("exit_code") or 0)
    if end.get("error"):
        click.echo(f"volar: {end['error']}", err=True)
    elif end.get("timed_out"):
        click.echo(f"volar: the command timed out after {timeout:g}s", err=True)
        code = EXIT_TIMED_OUT
    sys.exit(code)


async def _run(
    client: VolantClient, name: str, command: dict[str, Any], options: Options
) -> dict[str, Any] | None:
    async with client.exec(name, command) as stream:
        with _terminal(options):
            await _pump(stream, options)
    return stream.end


@contextlib.contextmanager
def _terminal(options: Options) -> Iterator[None]:
    if not options.raw:
        yield
        return
    with raw_mode(sys.stdin.fileno()):
        yield


async def _pump(stream: ExecStream, options: Options) -> None:
    """Output to stdout/stderr, input to the command, signals and resizes, until it ends."""
    loop = asyncio.get_running_loop()
    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}

    async def output() -> None:
        broken: set[str] = set()
        while (chunk := await stream.receive()) is not None:
            if chunk[0] in broken:
                continue
            out = outputs[chunk[0]]
            try:
                out.write(chunk[1])
                out.flush()
            except BrokenPipeError:
                # `volar vms exec … | head`: as for a local command, SIGPIPE ends it (141).
                broken.add(chunk[0])
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())
                os.close(devnull)
                await stream.signal("PIPE")

    async def forward() -> None:
        if sys.stdin.isatty() and not (options.interactive or options.tty):
            await stream.close_stdin()
            return
        stdin = Input(sys.stdin.fileno())
        while data := await stdin.read():
            await stream.send(data)
        await stream.close_stdin()

    def forward_signal(signum: signal.Signals) -> None:
        tasks.add(asyncio.ensure_future(stream.signal(signum.name.removeprefix("SIG"))))

    def resized() -> None:
        rows, cols = terminal_size()
        tasks.add(asyncio.ensure_future(stream.resize(rows, cols)))

    tasks: set[asyncio.Future[None]] = set()
    for signum in FORWARDED:
        # Without a pty Ctrl-C is a signal here: the command gets it, and its end is ours.
        loop.add_signal_handler(signum, forward_signal, signum)
    if options.tty:
        loop.add_signal_handler(signal.SIGWINCH, resized)
    feeder = asyncio.create_task(forward())
    try:
        await output()
    finally:
        for signum in (*FORWARDED, signal.SIGWINCH):
            loop.remove_signal_handler(signum)
        feeder.cancel()
        await asyncio.gather(feeder, *tasks, return_exceptions=True)
