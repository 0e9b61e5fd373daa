"""`volar vms console`: the VM's serial console in this terminal, like `virsh console`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import click

from volant.cli.completion import complete_vms
from volant.cli.context import Context, fail, pass_ctx
from volant.cli.terminal import Input, parse_escape, raw_mode, show_escape
from volant.client import VolantClient
from volant.client.console import DETACHED, TAKEN_OVER, VM_STOPPED, ConsoleStream

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Session:
    """How to attach: the VM, the escape byte (None: no escape key), and how long to wait for
    the guest's last output once stdin has ended."""

    name: str
    escape: int | None
    force: bool
    linger: float


@click.command("console")
@click.argument("name", shell_complete=complete_vms)
@click.option(
    "--escape",
    "-e",
    default="^]",
    show_default=True,
    help="Key that detaches: ^X or one character.",
)
@click.option("--force", is_flag=True, help="Take the console over from another client.")
@click.option("--log", "show_log", is_flag=True, help="Print the console log's tail and exit.")
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(1, 10_000),
    help="With --log: how many lines (default from the daemon).",
)
@click.option(
    "--linger",
    type=click.FloatRange(0, 3600),
    default=1.0,
    show_default=True,
    help="When stdin is no terminal: once it ends, print output until the guest is this many "
    "seconds quiet.",
)
@pass_ctx
def console(
    ctx: Context,
    name: str,
    escape: str,
    force: bool,
    show_log: bool,
    lines: int | None,
    linger: float,
) -> None:
    """Attach to a VM's serial console.

    Keys go to the guest as they are typed (Ctrl-C too); the escape key (Ctrl-] unless
    --escape) detaches. With stdin not a terminal, its bytes are forwarded as they are. The
    console's output is also kept in a log that outlives volantd restarts: --log prints it.
    """
    if show_log:
        sys.stdout.buffer.write(ctx.call(lambda c: c.console_log(name, lines)))
        sys.stdout.buffer.flush()
        return
    interactive = sys.stdin.isatty()
    session = Session(name, parse_escape(escape) if interactive else None, force, linger)
    code, ending = ctx.call(lambda c: _attach(c, session))
    if code == DETACHED:
        return
    if code == VM_STOPPED:
        click.echo(f"Console of {name} closed: {ending}", err=True)
        return
    hint = f"`volar vms console {name} --force` takes it back" if code == TAKEN_OVER else ""
    fail(f"console of {name} closed: {ending}", hint)


async def _attach(client: VolantClient, session: Session) -> tuple[int, str]:
    """Run the console until it ends: (close code, why), DETACHED when this side left."""
    async with client.console(session.name, force=session.force) as stream:
        with _terminal(session) as out:
            await _pump(stream, Input(sys.stdin.fileno()), out, session)
    code = stream.close_code  # None: the daemon did not end it, this side left
    return (DETACHED, "detached") if code is None else (code, stream.ending())


@contextlib.contextmanager
def _terminal(session: Session) -> Iterator[BinaryIO]:
    """Raw mode while attached, when stdin is a terminal; the hint line says how to leave."""
    if session.escape is None:
        click.echo(f"Connected to {session.name}", err=True)
        yield sys.stdout.buffer
        return
    click.echo(f"Connected to {session.name} (escape: {show_escape(session.escape)})", err=True)
    with raw_mode(sys.stdin.fileno()):
        yield sys.stdout.buffer
    click.echo("", err=True)  # the prompt starts on a line of its own


async def _pump(stream: ConsoleStream, stdin: Input, out: BinaryIO, session: Session) -> None:
    """Guest output to out and stdin to the guest, until the console ends, the escape key,
    a signal (SIGINT, SIGTERM, SIGHUP) or the end of stdin and then of the guest's output."""
    loop = asyncio.get_running_loop()
    printed = asyncio.Event()

    async def output() -> None:
        while (data := await stream.receive()) is not None:
            out.write(data)
            out.flush()
            printed.set()

    async def forward() -> None:
        escape = bytes([session.escape]) if session.escape is not None else b""
        while data := await stdin.read():
            cut = data.find(escape) if escape else -1
            await stream.send(data if cut < 0 else data[:cut])
            if cut >= 0:
                return
        # stdin ended: give the guest time to answer what it was sent.
        with contextlib.suppress(TimeoutError):
            while True:
                printed.clear()
                await asyncio.wait_for(printed.wait(), session.linger)

    stop = asyncio.Event()
    for signum in ENDING_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(c) for c in (output(), forward(), stop.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in ENDING_SIGNALS:
            loop.remove_signal_handler(signum)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
