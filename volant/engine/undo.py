"""Undo steps for multi-step host changes: run in reverse order when a later step fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

UndoStep = Callable[[], Awaitable[object]]


class Undo:
    """Collects the inverse of each completed step."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, UndoStep]] = []

    def push(self, what: str, step: UndoStep) -> None:
        self._steps.append((what, step))

    def clear(self) -> None:
        """The operation succeeded: nothing to undo."""
        self._steps.clear()

    async def run(self) -> None:
        """Undo every step, newest first, shielded so cancellation cannot stop it half-way."""
        steps, self._steps = self._steps[::-1], []
        await asyncio.shield(self._run(steps))

    @staticmethod
    async def _run(steps: list[tuple[str, UndoStep]]) -> None:
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("undo step failed: %s", what)
