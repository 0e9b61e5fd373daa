"""The workload's output: a bounded ring of recent lines plus live subscribers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

RING_LINES = 1000
SUBSCRIBER_QUEUE = 256
MAX_LINE = 8 * 1024


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    stream: str  # "stdout", "stderr" or "agent"
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "ts": self.ts, "stream": self.stream, "text": self.text}


class LogBuffer:
    """Keeps the last RING_LINES lines and fans new ones out to subscribers.

    A subscriber that does not keep up loses lines (its queue is bounded) instead of making the
    workload's pipe back up: the workload must never block on its log reader.
    """

    def __init__(self, size: int = RING_LINES) -> None:
        self._ring: deque[LogLine] = deque(maxlen=size)
        self._subscribers: set[asyncio.Queue[LogLine]] = set()
        self._seq = 0

    def append(self, stream: str, text: str) -> LogLine:
        self._seq += 1
        line = LogLine(self._seq, time.time(), stream, text[:MAX_LINE])
        self._ring.append(line)
        for queue in self._subscribers:
            if queue.full():
                continue
            queue.put_nowait(line)
        return line

    def recent(self, limit: int | None = None) -> list[LogLine]:
        lines = list(self._ring)
        return lines if limit is None else lines[-limit:] if limit > 0 else []

    async def follow(self, backlog: int = 0) -> AsyncGenerator[LogLine, None]:
        """Recent lines (up to backlog), then every new line until the consumer stops."""
        queue: asyncio.Queue[LogLine] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            for line in self.recent(backlog):
                yield line
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
