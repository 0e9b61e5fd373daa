"""The agent's exec route on loopback, with real processes chrooted into a busybox image (needs
root, as the guest agent is): streams, exit codes, stdin, env/workdir/user, timeout, a pty and
its resizes, and a command that never outlives its host connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from volant_agent.app import SECRET_HEADER, Agent, make_handler
from volant_agent.exec import HEADER, UPGRADE
from volant_agent.http import MAX_HEAD, connection_handler
from volant_agent.logs import LogBuffer
from volant_agent.manifest import RestartPolicy, Workload
from volant_agent.users import resolve_user
from volant_agent.workload import Supervisor

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and setuid need root"),
]

SECRET = "exec-test-secret"
TOOLS = ("sh", "ls", "cat", "id", "pwd", "echo", "sleep", "tty", "stty", "kill", "env")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A tiny image: busybox, a user `app`, and a file only the image has."""
    root = tmp_path / "root"
    for d in ("bin", "etc", "tmp", "home/app"):
        (root / d).mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for tool in TOOLS:
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "etc" / "os-release").write_text("ID=exec-test-image\n")
    os.chown(root / "home" / "app", 1000, 1000)
    return root


@dataclass
class Result:
    out: bytes = b""
    err: bytes = b""
    order: list[tuple[bytes, bytes]] = field(default_factory=list)
    exit: dict[str, Any] = field(default_factory=dict)


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.writer.write(HEADER.pack(kind, len(payload)) + payload)

    async def frame(self) -> tuple[bytes, bytes]:
        kind, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
        return kind, await self.reader.readexactly(length)

    async def until_exit(self) -> Result:
        result = Result()
        while True:
            kind, data = await asyncio.wait_for(self.frame(), 20)
            if kind == b"x":
                result.exit = json.loads(data)
                return result
            result.order.append((kind, data))
            if kind == b"o":
                result.out += data
            else:
                result.err += data


@contextlib.asynccontextmanager
async def agent_at(image: Path, prepared: bool = True) -> AsyncIterator[int]:
    workload = Workload(
        entrypoint=("/bin/true",), env={"GREETING": "hi"}, user="app", restart=RestartPolicy.NEVER
    )
    sup = Supervisor(workload, LogBuffer(), root=image, identity=resolve_user("app", image))
    agent = Agent(None, "test", LogBuffer(), sup, lambda: None, secret=SECRET)
    agent.workload_prepared = prepared
    server = await asyncio.start_server(
        connection_handler(make_handler(agent)), "127.0.0.1", 0, limit=MAX_HEAD
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def open_exec(port: int, **request: Any) -> tuple[int, bytes, Session]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(request).encode()
    writer.write(
        (
            f"POST /v1/exec HTTP/1.1\r\nHost: x\r\n{SECRET_HEADER}: {SECRET}\r\n"
            f"Connection: Upgrade\r\nUpgrade: {UPGRADE}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    rest = b"" if status == 101 else await reader.read()
    return status, rest, Session(reader, writer)


async def run(port: int, stdin: bytes | None = None, **request: Any) -> Result:
    status, body, session = await open_exec(port, **request)
    assert status == 101, body
    if stdin is not None:
        session.send(b"i", stdin)
        session.send(b"i")
    try:
        return await session.until_exit()
    finally:
        session.writer.close()


def test_streams_exit_code_and_the_image_root(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            script = "echo one; echo two >&2; sleep 0.2; echo three; exit 3"
            result = await run(port, argv=["sh", "-c", script])
            assert result.exit == {
                "exit_code": 3, "signal": None, "timed_out": False, "error": None,
            }  # fmt: skip
            assert result.out == b"one\nthree\n"
            assert result.err == b"two\n"
            assert result.order[-1] == (b"o", b"three\n")  # after the sleep, in order
            # The image's root, not the agent's: its own files, nothing else.
            root = await run(port, argv=["sh", "-c", "cat /etc/os-release; ls /"])
            assert root.out.split() == [b"ID=exec-test-image", b"bin", b"etc", b"home", b"tmp"]

    asyncio.run(go())


def test_user_workdir_env_and_stdin(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            script = "id -u; pwd; echo $GREETING $EXTRA $HOME $USER"
            as_app = await run(port, argv=["sh", "-c", script], env={"EXTRA": "x"})
            assert as_app.out.decode().split("\n")[:3] == [
                "1000", "/home/app", "hi x /home/app app",
            ]  # fmt: skip
            as_root = await run(port, argv=["sh", "-c", script], user="root", workdir="/tmp")
            assert as_root.out.decode().split("\n")[:3] == ["0", "/tmp", "hi /root root"]
            data = b"line\n" * 50_000  # more than a pipe holds
            echoed = await run(port, stdin=data, argv=["cat"])
            assert echoed.out == data
            assert echoed.exit["exit_code"] == 0

    asyncio.run(go())


def test_signal_timeout_and_missing_command(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            killed = await run(port, argv=["sh", "-c", "kill -TERM $$"])
            assert (killed.exit["exit_code"], killed.exit["signal"]) == (143, "SIGTERM")
            slow = await run(port, argv=["sleep", "30"], timeout=0.5)
            assert (slow.exit["exit_code"], slow.exit["timed_out"]) == (124, True)
            missing = await run(port, argv=["no-such-command"])
            assert missing.exit["exit_code"] == 127
            assert missing.exit["error"] == "command not found: no-such-command"

    asyncio.run(go())


def test_bad_requests_are_answered_before_the_upgrade(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            status, body, _ = await open_exec(port, argv=["id"], user="nobody")
            assert status == 400
            assert json.loads(body)["error"] == "user: 'nobody' is not in the image's /etc/passwd"
            status, body, _ = await open_exec(port, argv=["id"], workdir="/nope")
            assert status == 400
            assert b"workdir /nope is not a directory" in body
            status, body, _ = await open_exec(port, argv=[])
            assert status == 400
            assert b"argv" in body
        async with agent_at(image, prepared=False) as port:
            status, body, _ = await open_exec(port, argv=["id"])
            assert status == 409
            assert b"not ready" in body

    asyncio.run(go())


def test_a_pty_with_resizes(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            status, _, session = await open_exec(port, argv=["sh"], tty=True, rows=30, cols=100)
            assert status == 101
            session.send(b"i", b"[ -t 0 ] && echo is-a-tty; stty size\n")
            seen = b""
            while b"30 100" not in seen:
                seen += (await asyncio.wait_for(session.frame(), 20))[1]
            session.send(b"r", json.dumps({"rows": 40, "cols": 120}).encode())
            session.send(b"i", b"stty size; exit 5\n")
            result = await session.until_exit()
            session.writer.close()
            assert b"is-a-tty" in seen
            assert "40 120" in result.out.decode()
            assert result.exit["exit_code"] == 5
            assert result.err == b""

    asyncio.run(go())


def test_the_command_dies_with_its_connection(image: Path) -> None:
    async def go() -> None:
        async with agent_at(image) as port:
            status, _, session = await open_exec(port, argv=["sh", "-c", "echo $$; exec sleep 60"])
            assert status == 101
            _, data = await session.frame()
            pid = int(data)
            assert Path(f"/proc/{pid}").exists()
            session.writer.close()
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"pid {pid} outlived its exec connection")

    asyncio.run(go())
