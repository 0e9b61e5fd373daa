"""The agent on loopback with a real workload: supervision, health, routes, logs, main()."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from volant_agent.app import SECRET_HEADER, Agent, make_handler
from volant_agent.http import MAX_HEAD, connection_handler, fetch
from volant_agent.logs import LogBuffer
from volant_agent.manifest import Manifest, RestartPolicy, Workload, encode_config_disk, parse
from volant_agent.workload import Health, Supervisor, Timing

from volant.runtime.cmdline import encode_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HELLO_DIR = ROOT / "examples" / "plugins" / "hello"
FAST = Timing(backoff_initial=0.1, backoff_max=0.5, health_interval=0.1, unhealthy_after=2)
SECRET = "unit-test-agent-secret"
AUTH = {SECRET_HEADER: SECRET}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hello_doc(port: int, **workload: object) -> dict[str, object]:
    doc: dict[str, Any] = json.loads((HELLO_DIR / "manifest.json").read_text())
    doc["workload"].update(
        entrypoint=[sys.executable, str(HELLO_DIR / "app.py")],
        workdir=str(HELLO_DIR),
        base_url=f"http://127.0.0.1:{port}",
        env={"HELLO_PORT": str(port), "HELLO_NAME": "unit"},
        **workload,
    )
    return doc


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


class Running:
    def __init__(self, manifest: Manifest, url: str, agent: Agent) -> None:
        self.manifest, self.url, self.agent = manifest, url, agent
        self.poweroffs = 0

    @property
    def sup(self) -> Supervisor:
        assert self.agent.supervisor is not None
        return self.agent.supervisor

    async def get(
        self, path: str, method: str = "GET", body: bytes = b"", *, secret: str | None = SECRET
    ) -> tuple[int, object]:
        """One request; with the agent's secret unless secret says otherwise (None: none)."""
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        resp = await fetch(method, self.url + path, body=body, headers=headers, timeout=10)
        return resp.status, json.loads(resp.body) if resp.body else None


@contextlib.asynccontextmanager
async def start_agent(doc: dict[str, object]) -> AsyncIterator[Running]:
    manifest = parse(doc)
    assert manifest.workload is not None
    logs = LogBuffer()
    sup = Supervisor(manifest.workload, logs, FAST)
    running: Running | None = None

    def poweroff() -> None:
        assert running is not None
        running.poweroffs += 1

    agent = Agent(manifest, "test", logs, sup, poweroff, secret=SECRET)
    server = await asyncio.start_server(
        connection_handler(make_handler(agent)), "127.0.0.1", 0, limit=MAX_HEAD
    )
    port = server.sockets[0].getsockname()[1]
    running = Running(manifest, f"http://127.0.0.1:{port}", agent)
    task = asyncio.create_task(sup.run())
    try:
        yield running
    finally:
        await sup.stop(grace=5)
        await task
        server.close()
        await server.wait_closed()


@pytest.fixture
async def hello() -> AsyncIterator[Running]:
    async with start_agent(hello_doc(free_port())) as running:
        yield running


async def healthy(r: Running) -> None:
    await until(lambda: r.sup.health is Health.HEALTHY)


async def test_healthz_status_and_actions(hello: Running) -> None:
    await healthy(hello)
    assert await hello.get("/healthz") == (
        200,
        {"agent": "ok", "status": "ok", "workload": "healthy"},
    )
    code, status = await hello.get("/v1/status")
    assert code == 200
    assert isinstance(status, dict)
    assert status["manifest"]["name"] == "hello"
    assert status["workload"]["pid"] == hello.sup.pid
    assert status["workload"]["restarts"] == 0
    assert status["agent"]["rss_kib"] > 0
    code, greet = await hello.get("/v1/greet")
    assert (code, greet) == (200, {"greeting": "hello from unit", "pid": hello.sup.pid})
    assert (await hello.get("/v1/actions/greet"))[1] == greet
    assert await hello.get("/v1/echo", "POST", b"ping") == (200, {"echo": "ping"})
    # Any other /v1/* goes to the workload with /v1 stripped, as the Go agent did.
    assert (await hello.get("/v1/nothing-here"))[0] == 404
    assert (await hello.get("/v1/actions/nope"))[0] == 404
    assert (await hello.get("/elsewhere"))[0] == 404


async def test_killed_workload_is_restarted(hello: Running) -> None:
    await healthy(hello)
    first = hello.sup.pid
    code, body = await hello.get("/v1/workload/kill", "POST")
    assert code == 202
    assert body == {"signal": "SIGKILL", "signalled": first}
    await until(lambda: hello.sup.restarts == 1 and hello.sup.pid not in (None, first))
    await healthy(hello)
    assert hello.sup.last_exit == -signal.SIGKILL
    lines = [line.text for line in hello.agent.logs.recent()]
    assert any("exited with status -9" in t for t in lines)


async def test_never_healthy_workload_is_reported_unhealthy() -> None:
    port = free_port()
    doc = hello_doc(
        port, health_check={"path": "/health", "timeout_ms": 300, "start_period_ms": 500}
    )
    doc["workload"]["env"]["HELLO_UNHEALTHY"] = "1"  # type: ignore[index]
    async with start_agent(doc) as r:
        await until(lambda: r.sup.health is Health.UNHEALTHY)
        code, body = await r.get("/healthz")
        assert code == 503
        assert body == {"agent": "ok", "status": "degraded", "workload": "unhealthy"}


async def test_restart_policies_and_backoff() -> None:
    logs = LogBuffer()
    failing = Workload(entrypoint=(sys.executable, "-c", "import sys; sys.exit(3)"))
    sup = Supervisor(failing, logs, FAST)
    task = asyncio.create_task(sup.run())
    await until(lambda: sup.restarts >= 2)
    await sup.stop()
    await task
    assert sup.last_exit == 3
    texts = [line.text for line in logs.recent()]
    # Backoff doubles: 0.1 s, then 0.2 s.
    assert "restarting workload in 0.1s" in texts
    assert "restarting workload in 0.2s" in texts

    clean = Workload(entrypoint=(sys.executable, "-c", "print('done')"))
    once = Supervisor(clean, LogBuffer(), FAST)
    await asyncio.wait_for(once.run(), 10)  # on-failure: exit 0 is final
    assert (once.restarts, once.last_exit) == (0, 0)
    assert [line.text for line in once.logs.recent()][1] == "done"
    never = Workload(
        entrypoint=(sys.executable, "-c", "raise SystemExit(1)"), restart=RestartPolicy.NEVER
    )
    sup3 = Supervisor(never, LogBuffer(), FAST)
    await asyncio.wait_for(sup3.run(), 10)
    assert (sup3.restarts, sup3.last_exit) == (0, 1)


async def test_missing_binary_is_logged_and_retried() -> None:
    logs = LogBuffer()
    sup = Supervisor(Workload(entrypoint=("/nonexistent/binary",)), logs, FAST)
    task = asyncio.create_task(sup.run())
    await until(lambda: sup.restarts >= 1)
    await sup.stop()
    await task
    assert any("cannot start workload" in line.text for line in logs.recent())


async def test_logs_and_the_event_stream(hello: Running) -> None:
    await healthy(hello)
    code, body = await hello.get("/v1/logs?limit=50")
    assert code == 200
    assert isinstance(body, dict)
    texts = [line["text"] for line in body["lines"]]
    assert "hello: unit listening on" in " ".join(texts)
    assert "hello: stderr works too" in texts

    port = int(hello.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ask = f"GET /v1/logs/stream?limit=0 HTTP/1.1\r\nHost: x\r\n{SECRET_HEADER}: {SECRET}\r\n\r\n"
    writer.write(ask.encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"text/event-stream" in head
    await hello.get("/v1/greet")  # the workload logs the request: the stream must carry it
    events: list[dict[str, object]] = []
    while not any(e["text"] == "hello: GET /greet" for e in events):
        line = await asyncio.wait_for(reader.readline(), 5)
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    assert events[-1]["stream"] == "stdout"
    writer.close()


async def test_poweroff_is_answered_then_requested(hello: Running) -> None:
    assert await hello.get("/v1/poweroff", "POST") == (202, {"status": "powering off"})
    await until(lambda: hello.poweroffs == 1)


async def test_bad_requests_are_bounded(hello: Running) -> None:
    port = int(hello.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 431 ")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/echo HTTP/1.1\r\n{SECRET_HEADER}: {SECRET}\r\n".encode())
    writer.write(b"Content-Length: 99999999\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 413 ")


def test_main_serves_the_cmdline_manifest_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, agent_port = free_port(), free_port()
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 volant.manifest={encode_manifest(hello_doc(port))}\n")
    disk = tmp_path / "config.img"
    disk.write_bytes(encode_config_disk(None, SECRET))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    argv = [
        sys.executable,
        "-m",
        "volant_agent",
        "--cmdline",
        str(cmdline),
        "--disk",
        "/nonexistent",
        "--disk",
        str(disk),
    ]
    argv += ["--host", "127.0.0.1", "--port", str(agent_port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        body = b""
        while time.monotonic() < deadline:
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-H",
                    f"{SECRET_HEADER}: {SECRET}",
                    f"http://127.0.0.1:{agent_port}/healthz",
                ],
                capture_output=True,
                check=False,
            )
            body = out.stdout
            if b'"healthy"' in body:
                break
            time.sleep(0.1)
        assert b'"healthy"' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
