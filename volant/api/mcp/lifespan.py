"""Hold an async context manager open in a task of its own, for an owner that may enter and
leave from different tasks (aiohttp's `cleanup_ctx` promises nothing about which task starts and
which cleans up an app, while anyio's task groups must be left by the task that entered them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager


@contextlib.asynccontextmanager
async def in_own_task(
    enter: Callable[[], AbstractAsyncContextManager[None]], *, name: str, grace: float = 5.0
) -> AsyncIterator[None]:
    """Enter `enter()` in a new task and yield once it is entered; on the way out, let that task
    leave it, cancelling it after `grace` seconds. A failure to enter is raised here."""
    ready, stop = asyncio.Event(), asyncio.Event()

    async def host() -> None:
        async with enter():
            ready.set()
            await stop.wait()

    task = asyncio.create_task(host(), name=name)
    try:
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            await task  # raises why it could not enter
            raise RuntimeError(f"{name} ended before it was ready")
        yield
    finally:
        stop.set()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
