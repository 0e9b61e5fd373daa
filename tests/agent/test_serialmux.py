"""volantd's multiplexer (volant.runtime.agentmux/agentlink) against the agent's demultiplexer
(volant_agent.serialmux), over a socket standing in for QEMU's virtio-serial chardev; and the
Cloud Hypervisor hybrid vsock handshake against a peer speaking its documented protocol
(docs/vsock.md: `CONNECT <port>\\n`, `OK <hostport>\\n`, then the guest's stream; a port nobody
listens on is refused by closing the connection)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from volant_agent.serialmux import Demux, find_port

from volant.model import AgentChannel, ChannelKind
from volant.runtime.agentlink import (
    AGENT_SOCKET,
    HYBRID_SOCKET,
    SERIAL_SOCKET,
    AgentRelay,
    HybridRefused,
    hybrid_connect,
)
from volant.runtime.agentmux import PAD, Frame, Parser, ProtocolError, frame

pytestmark = pytest.mark.unit

FLOOD = 4 * 1024 * 1024


async def _agent_standin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`ECHO x` answers x; `FLOOD` writes FLOOD bytes (a log stream nobody reads)."""
    line = (await reader.readline()).decode().strip()
    if line == "FLOOD":
        chunk = bytes(range(256)) * 256
        for _ in range(FLOOD // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    else:
        writer.write(line.removeprefix("ECHO ").encode() + b"\n")
    writer.close()


class GuestEnd:
    """The agent's demux on its end of the port; restart() plays an agent that starts again."""

    def __init__(self, fd: int, port: int) -> None:
        self.fd, self.port = fd, port
        self.demux = Demux(fd, "127.0.0.1", port)
        self.task = asyncio.create_task(self.demux.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def restart(self) -> None:
        await self.stop()
        self.demux = Demux(self.fd, "127.0.0.1", self.port)
        self.task = asyncio.create_task(self.demux.run())


@contextlib.asynccontextmanager
async def guest(tmp_path: Path) -> AsyncIterator[tuple[Path, GuestEnd]]:
    """The agent stand-in on loopback, its demux on one end of a socketpair and, as QEMU's
    chardev, a unix server at run_dir/agent.sock relaying each host connection to the other
    end (the pair stays: the guest sees a new host only by its HELLO)."""
    agent = await asyncio.start_server(_agent_standin, "127.0.0.1", 0)
    port = agent.sockets[0].getsockname()[1]
    guest_end, port_end = socket.socketpair()
    guest_end.setblocking(False)
    end = GuestEnd(guest_end.fileno(), port)
    port_reader, port_writer = await asyncio.open_connection(sock=port_end)
    hosts: list[asyncio.StreamWriter] = []

    async def chardev(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hosts.append(writer)

        async def down() -> None:
            while data := await reader.read(65536):
                port_writer.write(data)
                await port_writer.drain()

        async def up() -> None:
            while data := await port_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        writer.close()

    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    server = await asyncio.start_unix_server(chardev, path=run_dir / SERIAL_SOCKET)
    try:
        yield run_dir, end
    finally:
        server.close()
        await end.stop()
        port_writer.close()
        guest_end.close()
        agent.close()


@contextlib.asynccontextmanager
async def relay(run_dir: Path, kind: ChannelKind = ChannelKind.SERIAL) -> AsyncIterator[Path]:
    task = asyncio.create_task(AgentRelay(run_dir, AgentChannel(kind, 3), 8080).run())
    path = run_dir / AGENT_SOCKET
    while not path.exists():
        await asyncio.sleep(0.01)
    try:
        yield path
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def echo(path: Path, text: str) -> str:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"ECHO {text}\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer.decode().strip()


async def test_a_stalled_channel_does_not_stop_the_others(tmp_path: Path) -> None:
    async with guest(tmp_path) as (run_dir, end), relay(run_dir) as path:
        demux = end.demux
        slow_reader, slow_writer = await asyncio.open_unix_connection(path)
        slow_writer.write(b"FLOOD\n")
        # The flood fills the host's socket buffers and its window, and stops there: the guest
        # holds the rest back until credit comes.
        while not any(c.credit <= 0 for c in demux.channels.values()):
            await asyncio.sleep(0.05)
        flood = next(iter(demux.channels.values()))
        answers = await asyncio.gather(*(echo(path, f"probe {i}") for i in range(20)))
        assert answers == [f"probe {i}" for i in range(20)]
        assert flood.credit <= 0  # still held back while the probes went through
        received = await asyncio.wait_for(slow_reader.read(), 30)
        chunk = bytes(range(256)) * 256
        assert received == chunk * (FLOOD // len(chunk))
        slow_writer.close()


async def test_a_new_host_session_resets_the_guest(tmp_path: Path) -> None:
    async with guest(tmp_path) as (run_dir, end):
        demux = end.demux
        async with relay(run_dir) as path:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"FLOOD\n")
            await reader.readexactly(1000)
            assert demux.channels  # the flood's channel, held open
        # volantd went away mid-flood (half a frame may be in flight); a new one connects.
        async with relay(run_dir) as path:
            assert await echo(path, "again") == "again"
            assert list(demux.channels) != [1] or not demux.channels[1].inbox.qsize()
        writer.close()


async def test_a_restarted_agent_gets_a_new_session(tmp_path: Path) -> None:
    async with guest(tmp_path) as (run_dir, end), relay(run_dir) as path:
        assert await echo(path, "before") == "before"
        # The agent starts again on the same port (a new demux, unsynced): volantd hears its
        # HELLO and greets it anew rather than sending channels into the void.
        await end.restart()
        # A connection made before volantd heard the HELLO is closed with the old session, as
        # the health probe's would be; the next ones are carried.
        async with asyncio.timeout(10):
            while (answer := await echo(path, "after")) != "after":
                assert answer == ""
                await asyncio.sleep(0.1)


def test_parser_finds_the_greeting_after_half_a_frame_and_pads() -> None:
    nonce = os.urandom(8)
    ack = frame(Frame.ACK, 0, payload=nonce)
    parser = Parser(ack)
    stale = frame(Frame.DATA, 7, payload=b"x" * 100)[:50]
    frames = parser.feed(stale + PAD + ack + frame(Frame.CREDIT, 7, 10))
    assert frames == [(Frame.ACK, 0, 8, nonce), (Frame.CREDIT, 7, 10, b"")]
    with pytest.raises(ProtocolError):
        parser.feed(b"\x00" * 8)


async def test_hybrid_vsock_handshake(tmp_path: Path) -> None:
    asked: list[bytes] = []

    async def cloud_hypervisor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        asked.append(line)
        if line != b"CONNECT 8080\n":
            writer.close()  # nothing listens on that port in the guest: CH drops the connection
            return
        writer.write(b"OK 1073741824\n")
        writer.write((await reader.readline()).upper())
        writer.close()

    server = await asyncio.start_unix_server(cloud_hypervisor, path=tmp_path / HYBRID_SOCKET)
    reader, writer = await hybrid_connect(tmp_path / HYBRID_SOCKET, 8080)
    writer.write(b"hello\n")
    assert await reader.read() == b"HELLO\n"
    writer.close()
    with pytest.raises(HybridRefused, match="refused port 9999"):
        await hybrid_connect(tmp_path / HYBRID_SOCKET, 9999)
    # The relay of a CH VM: its agent socket carries a connection through the handshake.
    async with relay(tmp_path, ChannelKind.HYBRID) as path:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"through the relay\n")
        assert await asyncio.wait_for(r.read(), 10) == b"THROUGH THE RELAY\n"
        w.close()
    assert asked == [b"CONNECT 8080\n", b"CONNECT 9999\n", b"CONNECT 8080\n"]
    server.close()


def test_port_discovery(tmp_path: Path) -> None:
    for name, label in (("vport0p0", "other"), ("vport1p1", "org.volant.agent")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "name").write_text(label + "\n")
    assert find_port(tmp_path) == Path("/dev/vport1p1")
    assert find_port(tmp_path, "missing") is None
