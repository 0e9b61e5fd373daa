"""Running a command on a pseudo-terminal, as an operator's shell would, to see what it draws."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SHOW_CURSOR = "\x1b[?25h"
HIDE_CURSOR = "\x1b[?25l"


def in_pty(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    interrupt_on: str = "",
    timeout: float = 120,
) -> tuple[int, str]:
    """Run argv with a 120x30 terminal as stdin, stdout and stderr: (exit status, everything
    it wrote). With interrupt_on, send SIGINT (Ctrl-C) once that text has appeared."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env), start_new_session=True
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([master], [], [], left)[0]:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the command, the last holder of the terminal, is gone
                break
            if not data:
                break
            seen += data
            if interrupt_on and interrupt_on in seen.decode(errors="replace"):
                proc.send_signal(signal.SIGINT)
                interrupt_on = ""
    finally:
        os.close(master)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=30), seen.decode(errors="replace")


def last_line(screen: str) -> str:
    """The line a terminal shows last, once escape sequences and redrawn lines are gone."""
    text = ANSI.sub("", screen).replace("\r\n", "\n")
    return text.rstrip().splitlines()[-1].split("\r")[-1]
