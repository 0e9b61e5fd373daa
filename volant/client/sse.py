"""An incremental decoder for Server-Sent Events (text/event-stream).

It follows the WHATWG "interpreting an event stream" rules: lines end in CRLF, LF or CR;
`data:` lines accumulate until a blank line dispatches the event; lines starting with `:` are
comments (keepalives); a stream that ends mid-event drops that event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"
# A line longer than this is not an event the daemon sends; stop instead of buffering forever.
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event; data is its `data:` lines joined by newlines."""

    data: str
    event: str = "message"
    id: str = ""


class SSEParser:
    """Feed it the stream's bytes in chunks of any size; it returns the complete events."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self.last_event_id = ""
        """The id of the last event dispatched, by an `id:` line with or without data (what a
        reconnection sends as Last-Event-ID); an event cut off mid-way does not count."""
        self._started = False
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that chunk completes, in order. ValueError on an endless line."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the second half of a CRLF split across chunks
        self._after_cr = False
        self._buf += chunk
        events: list[SSEEvent] = []
        while match := _EOL.search(self._buf):
            raw, self._buf = self._buf[: match.start()], self._buf[match.end() :]
            # A CR that ends the chunk may be half a CRLF: dispatch now, skip the LF if it comes.
            self._after_cr = match.group() == b"\r" and not self._buf
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        if len(self._buf) > MAX_LINE_BYTES:
            raise ValueError(f"event stream line longer than {MAX_LINE_BYTES} bytes")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not self._started:
            self._started = True
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        self.last_event_id = self._last_id
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self._last_id)
