"""Many connections over one byte stream: the framing volantd and the guest agent speak on a
virtio-serial port (a network-less VM on a host without /dev/vhost-vsock).

A virtio-serial port is one ordered byte stream, but the host holds several HTTP connections to
the agent at once (the health probe, an action, a log stream). Each connection is a channel.
A frame is an 8-byte header, big endian: magic 0xA7 (u8), type (u8), channel (u16), value (u32),
followed by `value` payload bytes for HELLO, ACK and DATA:

  HELLO   host -> guest, channel 0, payload an 8-byte nonce: a new host session. The guest
          closes every channel it has and answers ACK with the same nonce. Guest -> host,
          without payload: the agent (re)started; the host ends its session and greets again.
  ACK     guest -> host: the nonce of the HELLO it answers.
  OPEN    host -> guest: a channel opens; the guest connects it to its agent on loopback.
  DATA    payload bytes of the channel (at most MAX_PAYLOAD in one frame).
  CREDIT  the sender takes `value` more payload bytes on the channel.
  CLOSE   the sender closes the channel after its last DATA; the peer answers CLOSE unless it
          sent one already. An id is free again once both sides sent CLOSE.

Flow control: a side has at most WINDOW payload bytes of a channel in flight; the receiver
grants CREDIT once it has written them to its local socket. A log stream nobody reads stops its
own channel, never the health probe next to it.

Sessions: the port outlives volantd. The guest drops what it receives before it opens the port,
and a killed volantd may have left half a frame behind in either direction, so each side scans
for the other's greeting before it trusts the stream: the host sends PAD zero bytes (they finish
any half frame and are no valid header) and HELLO, again every second until the ACK with its
nonce arrives; the guest scans for a HELLO header. After that a malformed frame ends the host's
session (it reconnects) and makes the guest scan for the next HELLO.

The guest side of this protocol is agent/volant_agent/serialmux.py, written again there because
the agent never imports volant; tests/agent/test_serialmux.py runs the two against each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from enum import IntEnum

log = logging.getLogger(__name__)

MAGIC = 0xA7
HEADER = struct.Struct(">BBHI")
MAX_PAYLOAD = 32 * 1024
WINDOW = 256 * 1024
PAD = bytes(HEADER.size + MAX_PAYLOAD)
NONCE_BYTES = 8

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Frame(IntEnum):
    HELLO = 1
    ACK = 2
    OPEN = 3
    DATA = 4
    CREDIT = 5
    CLOSE = 6


_WITH_PAYLOAD = frozenset({Frame.HELLO, Frame.ACK, Frame.DATA})


def frame(kind: Frame, channel: int, value: int = 0, payload: bytes = b"") -> bytes:
    """One frame; value is the payload's length for the frame types that carry one."""
    if kind in _WITH_PAYLOAD:
        value = len(payload)
    return HEADER.pack(MAGIC, kind, channel, value) + payload


class ProtocolError(Exception):
    """The peer sent a frame this side cannot take."""


class Parser:
    """Splits the received bytes into frames, after scanning for marker (the peer's greeting)."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.synced = False
        self._buffer = bytearray()

    def unsync(self) -> None:
        self.synced = False
        self._buffer.clear()

    def feed(self, data: bytes) -> list[tuple[Frame, int, int, bytes]]:
        """The whole frames received so far; raises ProtocolError on a malformed header."""
        self._buffer += data
        frames: list[tuple[Frame, int, int, bytes]] = []
        while True:
            if not self.synced:
                at = self._buffer.find(self.marker)
                if at < 0:
                    # Keep a tail that may be the start of the marker.
                    del self._buffer[: max(0, len(self._buffer) - len(self.marker) + 1)]
                    return frames
                del self._buffer[:at]
                self.synced = True
            if len(self._buffer) < HEADER.size:
                return frames
            magic, kind, channel, value = HEADER.unpack_from(self._buffer)
            if magic != MAGIC or kind not in Frame._value2member_map_:
                raise ProtocolError(f"bad frame header {bytes(self._buffer[: HEADER.size])!r}")
            size = value if Frame(kind) in _WITH_PAYLOAD else 0
            if size > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {size} bytes (at most {MAX_PAYLOAD})")
            if len(self._buffer) < HEADER.size + size:
                return frames
            payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            frames.append((Frame(kind), channel, value, payload))


class Channel:
    """One connection carried over the link: its local socket pumped both ways, within credits."""

    def __init__(self, mux: Mux, number: int) -> None:
        self.mux = mux
        self.number = number
        self.credit = WINDOW
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent_close = False
        self.got_close = False
        self._may_send = asyncio.Event()
        self._may_send.set()
        self.task: asyncio.Task[None] | None = None

    def grant(self, value: int) -> None:
        self.credit += value
        if self.credit > 0:
            self._may_send.set()

    async def run(self, connect: Callable[[], Awaitable[Streams]]) -> None:
        try:
            reader, writer = await connect()
        except OSError as exc:
            log.debug("channel %d: cannot connect: %s", self.number, exc)
            self.close()
            await self._discard()
            return
        try:
            await asyncio.gather(self._outbound(reader), self._inbound(writer))
        finally:
            writer.close()

    async def _outbound(self, reader: asyncio.StreamReader) -> None:
        """Local socket -> peer, never beyond the peer's credit."""
        try:
            while True:
                while self.credit <= 0:
                    self._may_send.clear()
                    await self._may_send.wait()
                data = await reader.read(min(MAX_PAYLOAD, self.credit))
                if not data or self.sent_close:
                    break
                self.credit -= len(data)
                self.mux.send(frame(Frame.DATA, self.number, payload=data))
        except OSError:
            pass
        self.close()

    async def _inbound(self, writer: asyncio.StreamWriter) -> None:
        """Peer -> local socket; credit goes back once the bytes are written."""
        try:
            while (data := await self.inbox.get()) is not None:
                writer.write(data)
                await writer.drain()
                if not self.sent_close:
                    self.mux.send(frame(Frame.CREDIT, self.number, len(data)))
        except OSError:
            self.close()
            await self._discard()
            return
        writer.close()  # the peer closed: so does the local connection

    async def _discard(self) -> None:
        while await self.inbox.get() is not None:
            pass

    def close(self) -> None:
        """Tell the peer this side is done (once)."""
        if not self.sent_close:
            self.sent_close = True
            self.mux.send(frame(Frame.CLOSE, self.number))
        self.mux.settle(self)


class Mux:
    """The channels of one link session, dispatching frames; send() writes to the link."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.channels: dict[int, Channel] = {}

    def add(self, number: int, connect: Callable[[], Awaitable[Streams]]) -> Channel:
        channel = Channel(self, number)
        self.channels[number] = channel
        channel.task = asyncio.create_task(channel.run(connect))
        return channel

    def settle(self, channel: Channel) -> None:
        done = channel.sent_close and channel.got_close
        if done and self.channels.get(channel.number) is channel:
            del self.channels[channel.number]

    def dispatch(self, kind: Frame, number: int, value: int, payload: bytes) -> bool:
        """Handle a channel frame; False when it is none (HELLO, ACK, OPEN are the caller's)."""
        if kind not in (Frame.DATA, Frame.CREDIT, Frame.CLOSE):
            return False
        channel = self.channels.get(number)
        if channel is None or channel.got_close:
            return True  # a channel of an earlier session, or closed already
        if kind is Frame.DATA:
            channel.inbox.put_nowait(payload)
        elif kind is Frame.CREDIT:
            channel.grant(value)
        else:
            channel.got_close = True
            channel.inbox.put_nowait(None)
            channel.grant(WINDOW)  # wake the outbound pump so that it sees sent_close
            channel.close()
        return True

    async def reset(self) -> None:
        """End every channel (their local sockets close) without telling the peer."""
        channels, self.channels = list(self.channels.values()), {}
        tasks = [c.task for c in channels if c.task is not None]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
