"""The VM console end to end: a real volantd, a real QEMU guest with a shell on ttyS0, the
WebSocket bridge, the console log across a daemon restart, and `volar vms console` in a pty."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.daemon import (
    BIN,
    Daemon,
    build_guest,
    netns,
    raw,
    running_daemon,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.netns_thread import run_in_netns
from volant.client import ApiError, VolantClient
from volant.client.console import ConsoleStream

pytestmark = pytest.mark.integration

VM = "con"
KEY = "console-test-key"
TCP = "http://127.0.0.1:7777"
# The shell computes the marker, so neither the terminal's echo of the command nor a "not
# found" for a command garbled while the shell was starting matches the answer's line.
ASK = b"echo mark-$((6*7))\n"
ANSWER = b"\nmark-42\r\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    with running_daemon(tmp_path_factory.mktemp("volantd"), {"api.key": KEY}) as d:
        d.call(lambda c: c.create_vm({"name": VM, "plugin": "demo"}))
        d.call(until_the_shell_answers)
        yield d


async def converse(stream: ConsoleStream, ask: bytes, answer: bytes, timeout: float = 60) -> bytes:
    """Send ask every few seconds (the guest's shell may not be up yet) until answer comes."""
    seen = b""
    async with asyncio.timeout(timeout):
        while answer not in seen:
            await stream.send(ask)
            try:
                async with asyncio.timeout(3):
                    while answer not in seen:
                        data = await stream.receive()
                        assert data is not None, f"console closed: {stream.ending()}"
                        seen += data
            except TimeoutError:
                continue
    return seen


async def until_the_shell_answers(client: VolantClient, name: str = VM) -> bytes:
    async with client.console(name) as stream:
        return await converse(stream, ASK, ANSWER)


def test_console_bridges_both_ways(daemon: Daemon) -> None:
    seen = daemon.call(until_the_shell_answers)
    assert b"echo mark-$((6*7))" in seen  # the guest's terminal echoes what it was sent
    log = daemon.call(lambda c: c.console_log(VM, 10_000)).decode()
    assert "Linux version" in log
    assert "volant-init: ready name=con plugin=demo" in log
    assert "\nmark-42\r\n" in log
    assert daemon.call(lambda c: c.console_log(VM, 1)).count(b"\n") <= 1


def test_tcp_callers_need_the_key_and_may_send_text_frames(daemon: Daemon) -> None:
    async def over_tcp() -> tuple[ApiError, bytes, bytes]:
        async with VolantClient(TCP, api_key="wrong") as client:
            with pytest.raises(ApiError) as refused:
                async with client.console(VM):
                    pass
        # Another site's page in the operator's browser must not reach a root shell.
        headers = {"Origin": "http://evil.example", "X-Volant-API-Key": KEY}
        async with aiohttp.ClientSession(headers=headers) as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as cross_site:
                await session.ws_connect(f"{TCP}/ws/v1/vms/{VM}/console")
        assert cross_site.value.status == 403
        async with VolantClient(TCP, api_key=KEY) as client, client.console(VM) as stream:
            by_client = await converse(stream, b"echo tcp-$((6*7))\n", b"\ntcp-42\r\n")
        # A page served from volantd's own origin may attach; a browser cannot set headers (the
        # key goes in the query) and may send text frames.
        seen = b""
        url = f"{TCP}/ws/v1/vms/{VM}/console?api_key={KEY}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, origin=TCP) as ws:
            await ws.send_str("echo text-$((6*7))\n")
            async with asyncio.timeout(30):
                while b"\ntext-42\r\n" not in seen:
                    message = await ws.receive()
                    assert message.type is aiohttp.WSMsgType.BINARY, message
                    seen += message.data
        return refused.value, by_client, seen

    refused, by_client, by_browser = asyncio.run(run_in_netns(daemon.ns, over_tcp))
    assert (refused.status, refused.code) == (401, "Unauthenticated")
    assert b"\ntcp-42\r\n" in by_client
    assert b"\ntext-42\r\n" in by_browser


def test_second_client_is_refused_unless_it_forces(daemon: Daemon) -> None:
    async def two(client: VolantClient) -> tuple[ApiError, int | None, str, bytes]:
        async with client.console(VM) as first:
            with pytest.raises(ApiError) as refused:
                async with client.console(VM):
                    pass
            async with client.console(VM, force=True) as second:
                # The first may still get bytes the guest printed before the takeover; then
                # its console ends.
                async with asyncio.timeout(30):
                    while await first.receive() is not None:
                        pass
                answer = await converse(second, ASK, ANSWER)
            return refused.value, first.close_code, first.ending(), answer

    refused, code, ending, answer = daemon.call(two)
    assert (refused.status, refused.code) == (409, "Conflict")
    assert "attached elsewhere" in refused.detail
    assert "--force" in refused.hint
    assert (code, ending) == (4001, "another client took the console over")
    assert ANSWER in answer


def read_until(fd: int, wanted: bytes, timeout: float = 60, send: bytes = b"") -> bytes:
    """Read a pty master until wanted shows; send is written again every 3 s meanwhile."""
    seen = b""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while wanted not in seen:
        now = time.monotonic()
        assert now < deadline, f"never saw {wanted!r} in {seen[-2000:]!r}"
        if send and now >= next_send:
            os.write(fd, send)
            next_send = now + 3
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 65536)
    return seen


def read_rest(fd: int) -> bytes:
    seen = b""
    while select.select([fd], [], [], 0.2)[0]:
        seen += os.read(fd, 65536)
    return seen


def test_volar_console_in_a_terminal(daemon: Daemon) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [str(BIN / "volar"), "--api", daemon.api, "vms", "console", VM],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    try:
        read_until(master, b"Connected to con (escape: ^])")
        deadline = time.monotonic() + 5
        while termios.tcgetattr(slave) == before:  # raw while attached
            assert time.monotonic() < deadline, "volar never put the terminal in raw mode"
            time.sleep(0.05)
        # Raw mode: Enter arrives as CR, which the guest's terminal turns into a newline.
        read_until(master, ANSWER, send=ASK.replace(b"\n", b"\r"))
        os.write(master, b"\x1d")
        status = proc.wait(10)
        assert status == 0, read_rest(master)
        after = termios.tcgetattr(slave)
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)
    assert after == before  # volar left the terminal as it found it


def test_volar_console_with_a_pipe_and_the_log(daemon: Daemon) -> None:
    proc = subprocess.run(
        [str(BIN / "volar"), "--api", daemon.api, "vms", "console", VM, "--linger", "2"],
        input=b"echo pipe-$((6*7))\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"\npipe-42\r\n" in proc.stdout
    assert proc.stderr == b"Connected to con\n"
    log = daemon.volar("vms", "console", VM, "--log", "-n", "50")
    assert log.returncode == 0
    assert "\npipe-42\n" in log.stdout  # text mode: \r\n read as \n


def test_console_closes_when_the_vm_stops(daemon: Daemon) -> None:
    async def stop_while_attached(client: VolantClient) -> tuple[int | None, str]:
        async with client.console(VM) as stream:
            stopping = asyncio.create_task(client.stop_vm(VM))
            while await stream.receive() is not None:
                pass
            await stopping
            return stream.close_code, stream.ending()

    assert daemon.call(stop_while_attached) == (4000, "the VM stopped")
    wait_status(daemon, VM, "stopped")

    async def attach(client: VolantClient) -> None:
        async with client.console(VM):
            pass

    with pytest.raises(ApiError) as refused:
        daemon.call(attach)
    assert (refused.value.status, refused.value.code) == (409, "InvalidState")
    status, ctype, problem = raw(daemon, "GET", f"/ws/v1/vms/{VM}/console")
    assert (status, ctype, problem["code"]) == (400, "application/problem+json", "InvalidArgument")
    cli = daemon.volar("vms", "console", VM)
    assert cli.returncode == 1
    assert cli.stderr.splitlines()[0] == (
        "volar: error: VM 'con' is stopped; its console exists only while it runs"
    )
    # What the guest printed while powering off stays readable.
    assert "reboot: Power down" in daemon.volar("vms", "console", VM, "--log").stdout
    with pytest.raises(ApiError) as missing:
        daemon.call(lambda c: c.console_log("ghost"))
    assert missing.value.status == 404


def test_console_log_survives_a_daemon_restart(tmp_path: Path) -> None:
    build_guest()
    log_file = tmp_path / "state" / "consoles" / "keep.log"
    with netns() as ns:
        first = start_daemon(ns, tmp_path)
        try:
            first.call(lambda c: c.create_vm({"name": "keep", "plugin": "demo"}))
            wait_for_log(first, "keep", "volant-init: ready")

            async def attached_while_volantd_stops(client: VolantClient) -> tuple[int | None, str]:
                async with client.console("keep") as stream:
                    stop = asyncio.create_task(
                        asyncio.to_thread(stop_daemon, first, delete_vms=False)
                    )
                    while await stream.receive() is not None:
                        pass
                    await stop
                    return stream.close_code, stream.ending()

            assert first.call(attached_while_volantd_stops) == (1001, "volantd is stopping")
        finally:
            stop_daemon(first, delete_vms=False)
        assert "volant-init: ready name=keep" in log_file.read_text(errors="replace")
        second = start_daemon(ns, tmp_path)
        try:
            assert second.call(lambda c: c.get_vm("keep"))["status"] == "running"
            assert b"volant-init: ready name=keep" in second.call(lambda c: c.console_log("keep"))

            async def attach_with_a_short_timeout() -> bytes:
                # A console outlives the client's time limit for requests.
                async with (
                    VolantClient(second.api, timeout=1) as client,
                    client.console("keep") as stream,
                ):
                    await asyncio.sleep(1.5)
                    return await converse(stream, ASK, ANSWER)

            assert ANSWER in asyncio.run(attach_with_a_short_timeout())
            # QEMU's logfile may trail the socket by a write: wait for it rather than race it.
            wait_for_log(second, "keep", ANSWER.decode(), timeout=15)
        finally:
            stop_daemon(second)
    assert not log_file.exists()  # deleting the VM deletes its log


def wait_for_log(daemon: Daemon, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in daemon.call(lambda c: c.console_log(name)):
        assert time.monotonic() < deadline, f"{name} never printed {text!r}"
        time.sleep(0.5)
