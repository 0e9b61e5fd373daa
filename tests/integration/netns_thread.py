"""Run host-side asyncio code inside a test's network namespace, from the test's own process.

A guest's address is only reachable inside the namespace that holds its bridge, while volantd's
clients (aiohttp sessions) need a running event loop in-process. setns(2) with CLONE_NEWNET moves
only the calling thread, and every socket created afterwards lives in that namespace; so the code
runs on a fresh event loop in a dedicated thread (never a pooled one, which would carry the
namespace into unrelated work) that enters the namespace first.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only in Python 3.12


def enter_netns(name: str) -> None:
    """Move the calling thread into the namespace `ip netns add name` created."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


async def run_in_netns(name: str, func: Callable[[], Awaitable[T]]) -> T:
    """Await func() on its own event loop in a thread inside namespace name; return its result."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    async def call() -> T:
        return await func()

    def target() -> None:
        try:
            enter_netns(name)
            result = asyncio.run(call())
        except BaseException as exc:
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        await asyncio.to_thread(thread.join)
