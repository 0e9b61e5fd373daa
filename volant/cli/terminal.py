"""The operator's terminal for `volar vms console`: raw mode, the escape key, stdin without
blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections.abc import Iterator

import click

CHUNK = 4096


def parse_escape(text: str) -> int:
    """The byte of an escape key written as `^X` (Ctrl-X, as virsh and telnet write it) or as
    one ASCII character."""
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return ord(text[1].upper()) ^ 0x40  # ^] is 0x1d, ^? is DEL
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise click.BadParameter(f"{text!r} is not ^X or one ASCII character")


def show_escape(byte: int) -> str:
    """How parse_escape's result is written back: ^] for 0x1d."""
    return f"^{chr(byte ^ 0x40)}" if byte < 0x20 or byte == 0x7F else chr(byte)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal at fd in raw mode (every key, Ctrl-C included, goes to the guest), put back
    as it was however the block ends."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Input:
    """Chunks of a file descriptor's input as they come, without blocking the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self) -> bytes:
        """The next chunk; b"" at the end (or when the terminal went away)."""
        loop = asyncio.get_running_loop()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(self.fd, _wake, ready)
            except PermissionError:
                # epoll refuses regular files and /dev/null; reading them never blocks.
                return self._read()
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            with contextlib.suppress(BlockingIOError):
                return self._read()

    def _read(self) -> bytes:
        try:
            return os.read(self.fd, CHUNK)
        except BlockingIOError:
            raise
        except OSError:  # EIO: the terminal hung up
            return b""


def _wake(ready: asyncio.Future[None]) -> None:
    # The reader may fire again before the waiting task has run and removed it.
    if not ready.done():
        ready.set_result(None)
