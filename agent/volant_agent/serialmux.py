"""The guest's end of the multiplexed virtio-serial port (a network-less VM on a host without
vhost-vsock): each channel volantd opens becomes a connection to this agent on loopback.

The protocol (frames, credits, the HELLO/ACK greeting) is described in volantd's
volant/runtime/agentmux.py and in agent/README.md; it is written again here because the agent
never imports volant. A frame: magic 0xA7 (u8), type (u8), channel (u16), value (u32), then
`value` payload bytes for HELLO, ACK and DATA.

The port is /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is PORT_NAME. QEMU tells
the guest when volantd connects or disconnects its socket: while nobody is connected a read
gives end of file (and poll POLLHUP), and writes wait. On end of file every channel is closed
and the port polled again; a new volantd greets with HELLO, which resets the channels too. An
agent that starts (again) sends HELLO itself, without payload: a volantd that was talking to the
agent before ends its session and greets anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger("volant_agent")

PORT_NAME = "org.volant.agent"
PORTS = Path("/sys/class/virtio-ports")
MAGIC = 0xA7
HEADER = struct.Struct(">BBHI")
HELLO, ACK, OPEN, DATA, CREDIT, CLOSE = range(1, 7)
WITH_PAYLOAD = (HELLO, ACK, DATA)
MAX_PAYLOAD = 32 * 1024
WINDOW = 256 * 1024
HELLO_MARK = HEADER.pack(MAGIC, HELLO, 0, 8)
IDLE_POLL = 0.5  # how often a port without host is looked at again


def find_port(ports: Path = PORTS, name: str = PORT_NAME) -> Path | None:
    """The device of the virtio-serial port called name (no udev here: sysfs says)."""
    for entry in sorted(ports.glob("vport*")):
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == name:
                return Path("/dev") / entry.name
    return None


def frame(kind: int, channel: int, value: int = 0, payload: bytes = b"") -> bytes:
    if kind in WITH_PAYLOAD:
        value = len(payload)
    return HEADER.pack(MAGIC, kind, channel, value) + payload


class Channel:
    """One connection from volantd, carried to the agent on loopback within credits."""

    def __init__(self, demux: Demux, number: int) -> None:
        self.demux = demux
        self.number = number
        self.credit = WINDOW
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent_close = self.got_close = False
        self.may_send = asyncio.Event()
        self.may_send.set()
        self.task: asyncio.Task[None] | None = None

    def grant(self, value: int) -> None:
        self.credit += value
        if self.credit > 0:
            self.may_send.set()

    async def run(self, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            log.warning("serial channel %d: agent unreachable: %s", self.number, exc)
            self.close()
            while await self.inbox.get() is not None:
                pass
            return
        try:
            await asyncio.gather(self._outbound(reader), self._inbound(writer))
        finally:
            writer.close()

    async def _outbound(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while True:
                while self.credit <= 0:
                    self.may_send.clear()
                    await self.may_send.wait()
                data = await reader.read(min(MAX_PAYLOAD, self.credit))
                if not data or self.sent_close:
                    break
                self.credit -= len(data)
                self.demux.send(frame(DATA, self.number, payload=data))
        self.close()

    async def _inbound(self, writer: asyncio.StreamWriter) -> None:
        try:
            while (data := await self.inbox.get()) is not None:
                writer.write(data)
                await writer.drain()
                if not self.sent_close:
                    self.demux.send(frame(CREDIT, self.number, len(data)))
        except OSError:
            self.close()
            while await self.inbox.get() is not None:
                pass
            return
        writer.close()

    def close(self) -> None:
        if not self.sent_close:
            self.sent_close = True
            self.demux.send(frame(CLOSE, self.number))
        if self.got_close and self.demux.channels.get(self.number) is self:
            del self.demux.channels[self.number]


class Demux:
    """Reads frames from the port fd and runs a Channel per OPEN; writes frames back."""

    def __init__(self, fd: int, host: str, port: int) -> None:
        self.fd = fd
        self.host = host
        self.port = port
        self.channels: dict[int, Channel] = {}
        self.synced = False
        self._buffer = bytearray()
        self._out = bytearray()
        self._loop = asyncio.get_running_loop()

    # -- writing: non-blocking, buffered; the port takes nothing while no host is connected
    def send(self, data: bytes) -> None:
        self._out += data
        if len(self._out) == len(data):
            self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            log.debug("serial port write failed: %s", exc)
            written = len(self._out)
        del self._out[:written]
        if self._out:
            self._loop.add_writer(self.fd, self._flush_ready)

    def _flush_ready(self) -> None:
        self._loop.remove_writer(self.fd)
        if self._out:
            self._flush()

    # -- reading
    async def _read(self) -> bytes:
        while True:
            try:
                return os.read(self.fd, 65536)
            except BlockingIOError:
                ready: asyncio.Future[None] = self._loop.create_future()
                self._loop.add_reader(self.fd, _wake, ready)
                try:
                    await ready
                finally:
                    self._loop.remove_reader(self.fd)

    async def run(self) -> None:
        """Serve the port until cancelled."""
        # A volantd that was talking to an earlier agent (this one restarted) starts over.
        self.send(frame(HELLO, 0))
        try:
            while True:
                try:
                    data = await self._read()
                except OSError as exc:  # treated as a host that went away: start over
                    log.warning("serial port: read failed: %s", exc)
                    data = b""
                if not data:  # no host on the other end (yet, or any more)
                    if self.synced or self.channels:
                        log.info("serial port: host went away; closing its channels")
                    await self.reset(unsync=True)
                    await asyncio.sleep(IDLE_POLL)
                    continue
                self._feed(data)
        finally:
            await self.reset(unsync=True)

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self.synced:
                at = self._buffer.find(HELLO_MARK)
                if at < 0:
                    del self._buffer[: max(0, len(self._buffer) - len(HELLO_MARK) + 1)]
                    return
                del self._buffer[:at]
                self.synced = True
            if len(self._buffer) < HEADER.size:
                return
            magic, kind, number, value = HEADER.unpack_from(self._buffer)
            size = value if kind in WITH_PAYLOAD else 0
            if magic != MAGIC or not HELLO <= kind <= CLOSE or size > MAX_PAYLOAD:
                log.info("serial port: bad frame; waiting for the host's next HELLO")
                self.synced = False
                del self._buffer[:1]
                continue
            if len(self._buffer) < HEADER.size + size:
                return
            payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            self._dispatch(kind, number, value, payload)

    def _dispatch(self, kind: int, number: int, value: int, payload: bytes) -> None:
        if kind == HELLO:
            log.info("serial port: host session started")
            self._drop_channels()
            self._out.clear()  # whatever was for the last host is of no use to this one
            self.send(frame(ACK, 0, payload=payload))
            return
        if kind == OPEN:
            old = self.channels.get(number)
            if old is not None and old.task is not None:
                old.task.cancel()
            opened = self.channels[number] = Channel(self, number)
            opened.task = asyncio.create_task(opened.run(self.host, self.port))
            return
        channel = self.channels.get(number)
        if channel is None or channel.got_close:
            return
        if kind == DATA:
            channel.inbox.put_nowait(payload)
        elif kind == CREDIT:
            channel.grant(value)
        elif kind == CLOSE:
            channel.got_close = True
            channel.inbox.put_nowait(None)
            channel.grant(WINDOW)
            channel.close()

    def _drop_channels(self) -> list[asyncio.Task[None]]:
        tasks = [c.task for c in self.channels.values() if c.task is not None]
        self.channels = {}
        for task in tasks:
            task.cancel()
        return tasks

    async def reset(self, *, unsync: bool) -> None:
        tasks = self._drop_channels()
        if unsync:
            self.synced = False
            self._buffer.clear()
            self._out.clear()
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self.fd)
        await asyncio.gather(*tasks, return_exceptions=True)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def serve_port(device: Path, host: str, port: int) -> None:
    """Demultiplex the virtio-serial port at device to the agent at host:port, until cancelled."""
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    log.info("serving volantd's channels on %s", device)
    try:
        await Demux(fd, host, port).run()
    finally:
        os.close(fd)
