"""A hypervisor's serial console: the unix socket it serves, and the log kept of it.

QEMU (`-chardev socket,server=on,wait=off,logfile=...`) and Cloud Hypervisor
(`--serial socket=...`) both serve the guest's ttyS0 as a plain byte stream on a unix socket,
one client at a time: a second client's connect succeeds but waits in the listen backlog, unread,
until the first leaves. Who may be attached is therefore the engine's decision, not the socket's.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from volant.model import Unavailable

CONNECT_RETRY = 0.05
BLOCK = 64 * 1024


async def connect_serial(
    path: Path, *, wait: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the serial socket at path, retrying for up to wait seconds while the
    hypervisor has not created it yet (a VM that is just starting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return await asyncio.open_unix_connection(str(path), limit=BLOCK)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if loop.time() >= deadline:
                raise Unavailable(
                    f"the serial console socket {path} does not answer: {exc.strerror}",
                    hint="the hypervisor may still be starting, or have just exited",
                ) from exc
        await asyncio.sleep(CONNECT_RETRY)


def tail(path: Path, lines: int, max_bytes: int) -> bytes:
    """The last `lines` lines of the file at path (all of a last line without its newline),
    never more than its last max_bytes; empty when there is no such file. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    with os.fdopen(fd, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        start = end
        data = b""
        # A trailing newline ends the last line rather than starting an empty one.
        while start > 0 and end - start < max_bytes and data.count(b"\n", 0, -1) < lines:
            step = min(BLOCK, start, max_bytes - (end - start))
            start -= step
            file.seek(start)
            data = file.read(step) + data
    cut = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1 :]
