"""How volantd reaches the agent of a network-less VM (`network.mode: vsock`).

The engine's agent client always speaks HTTP to a unix socket in the VM's run directory
(AGENT_SOCKET); an AgentRelay serves it and carries each connection to the guest's agent port
over what the host and hypervisor have:

- QEMU with /dev/vhost-vsock: AF_VSOCK to (cid, port).
- Cloud Hypervisor: its hybrid vsock, a unix socket on which `CONNECT <port>\\n` is answered
  `OK <host port>\\n`, after which the stream is the guest's port; when nothing listens on the
  port in the guest, the connection is closed instead (CH's docs/vsock.md and Firecracker's,
  whose muxer CH took).
- QEMU without vhost-vsock: a virtio-serial port on a unix socket, multiplexed into channels
  (volant.runtime.agentmux), one per connection.

The relay runs while the hypervisor is followed (from launch or adoption until it ends), so it
comes back after a volantd restart; its sockets live in the run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from volant.model import AGENT_PORT, AgentChannel, ChannelKind, LaunchSpec
from volant.runtime.agentmux import (
    HEADER,
    MAGIC,
    NONCE_BYTES,
    PAD,
    Frame,
    Mux,
    Parser,
    ProtocolError,
    Streams,
    frame,
)

log = logging.getLogger(__name__)

AGENT_SOCKET = "agent-http.sock"  # what the agent client connects to
SERIAL_SOCKET = "agent.sock"  # QEMU's chardev behind the virtio-serial port
HYBRID_SOCKET = "vsock.sock"  # Cloud Hypervisor's hybrid vsock
SERIAL_PORT_NAME = "org.volant.agent"
HELLO_EVERY = 1.0
RECONNECT = 0.5
OPEN_WAIT = 5.0
HANDSHAKE_TIMEOUT = 5.0
MAX_CHANNELS = 1024


class HybridRefused(OSError):
    """Cloud Hypervisor did not connect the guest port (nothing listens there yet)."""


def hypervisor_sockets(spec: LaunchSpec) -> list[Path]:
    """The sockets the hypervisor of a network-less VM binds in its run directory: a stale
    one from its last run must go first (Cloud Hypervisor refuses to bind over it)."""
    if spec.agent_channel is None:
        return []
    return [spec.run_dir / SERIAL_SOCKET, spec.run_dir / HYBRID_SOCKET]


async def hybrid_connect(path: Path, port: int, timeout: float = HANDSHAKE_TIMEOUT) -> Streams:
    """A stream to the guest's vsock port through Cloud Hypervisor's hybrid vsock socket."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(f"CONNECT {port}\n".encode())
        async with asyncio.timeout(timeout):
            await writer.drain()
            answer = await reader.readline()
    except BaseException:
        writer.close()
        raise
    words = answer.decode("ascii", errors="replace").split()
    if len(words) != 2 or words[0] != "OK" or not words[1].isdigit():
        writer.close()
        raise HybridRefused(f"hybrid vsock at {path} refused port {port}: {answer!r}")
    return reader, writer


async def vsock_connect(cid: int, port: int) -> Streams:
    """A stream to the guest's vsock port over the host's vhost-vsock."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (cid, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class SerialLink:
    """volantd's end of the multiplexed virtio-serial port: QEMU's chardev socket at path."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.mux: Mux | None = None
        self.ready = asyncio.Event()
        self._next = 0

    async def run(self) -> None:
        """Hold the port until cancelled, reconnecting whenever the session ends."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                await asyncio.sleep(RECONNECT)
                continue
            try:
                await self._session(reader, writer)
            except (OSError, ProtocolError) as exc:
                log.info("agent port %s: session ended: %s", self.path, exc)
            except Exception:
                # Whatever it was, the VM must stay reachable: start a new session.
                log.exception("agent port %s: session failed", self.path)
            finally:
                self.ready.clear()
                mux, self.mux = self.mux, None
                if mux is not None:
                    await mux.reset()
                writer.close()
            await asyncio.sleep(RECONNECT)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = os.urandom(NONCE_BYTES)
        parser = Parser(HEADER.pack(MAGIC, Frame.ACK, 0, NONCE_BYTES) + nonce)
        self.mux = mux = Mux(writer.write)
        greeter = asyncio.create_task(self._greet(writer, nonce))
        try:
            while data := await reader.read(65536):
                for kind, number, value, payload in parser.feed(data):
                    if kind is Frame.ACK:
                        if payload == nonce and not self.ready.is_set():
                            greeter.cancel()
                            self.ready.set()
                    elif kind is Frame.HELLO:
                        raise ProtocolError("the guest's agent started again")
                    elif not mux.dispatch(kind, number, value, payload):
                        raise ProtocolError(f"unexpected {kind.name} from the guest")
        finally:
            greeter.cancel()

    async def _greet(self, writer: asyncio.StreamWriter, nonce: bytes) -> None:
        # The guest drops what reaches its port before the agent opens it: say it until
        # answered. QEMU reads nothing from the socket until then either, so a greeting still
        # waiting in the buffer is not repeated (the backlog would only grow).
        while True:
            if writer.transport.get_write_buffer_size() == 0:
                writer.write(PAD + frame(Frame.HELLO, 0, payload=nonce))
            await asyncio.sleep(HELLO_EVERY)

    async def carry(self, client: Streams) -> None:
        """Carry one client connection to the agent's port as a channel of the session."""
        try:
            async with asyncio.timeout(OPEN_WAIT):
                await self.ready.wait()
        except TimeoutError:
            log.debug("agent port %s: no guest session to carry a connection", self.path)
            client[1].close()
            return
        mux = self.mux
        assert mux is not None
        number = self._free_number(mux)
        if number is None:
            client[1].close()
            return
        mux.send(frame(Frame.OPEN, number))
        channel = mux.add(number, lambda: _ready(client))
        assert channel.task is not None
        await asyncio.wait({channel.task})  # a session reset cancels it: that is its end too

    def _free_number(self, mux: Mux) -> int | None:
        if len(mux.channels) >= MAX_CHANNELS:
            return None
        while True:
            self._next = self._next % 0xFFFF + 1
            if self._next not in mux.channels:
                return self._next


async def _ready(streams: Streams) -> Streams:
    return streams


class AgentRelay:
    """Serves run_dir/AGENT_SOCKET and carries its connections to the guest's agent."""

    def __init__(self, run_dir: Path, channel: AgentChannel, port: int) -> None:
        self.path = run_dir / AGENT_SOCKET
        self.run_dir = run_dir
        self.channel = channel
        self.port = port
        self._serial = (
            SerialLink(run_dir / SERIAL_SOCKET, port)
            if channel.kind is ChannelKind.SERIAL
            else None
        )

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._serial is not None:
            await self._serial.carry((reader, writer))
            return
        try:
            if self.channel.kind is ChannelKind.HYBRID:
                guest = await hybrid_connect(self.run_dir / HYBRID_SOCKET, self.port)
            else:
                guest = await vsock_connect(self.channel.cid, self.port)
        except OSError as exc:
            log.debug("agent of %s unreachable: %s", self.run_dir.name, exc)
            writer.close()
            return
        await asyncio.gather(_splice(reader, guest[1]), _splice(guest[0], writer))

    async def run(self) -> None:
        """Serve until cancelled; the socket file goes with it."""
        server = await asyncio.start_unix_server(self._carry, path=self.path)
        link = asyncio.create_task(self._serial.run()) if self._serial is not None else None
        try:
            await asyncio.Future()  # until cancelled
        finally:
            if link is not None:
                link.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link
            server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()


@contextlib.asynccontextmanager
async def agent_relay(spec: LaunchSpec, port: int = AGENT_PORT) -> AsyncIterator[bool]:
    """Run the relay of a network-less VM for the block's duration; yields whether there is
    one (a VM with a NIC has none)."""
    if spec.agent_channel is None:
        yield False
        return
    relay = AgentRelay(spec.run_dir, spec.agent_channel, port)
    task = asyncio.create_task(relay.run())
    try:
        yield True
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
