"""The agent's secret and its address: every route but /healthz wants the VM's secret, a
missing or wrong one gets the same bare 401, and the agent listens on the guest's own address."""

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
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from volant_agent.address import interface_address, listen_address, static_address
from volant_agent.app import SECRET_HEADER, Agent, make_handler
from volant_agent.http import MAX_HEAD, Request, Response, connection_handler, fetch, json_response
from volant_agent.logs import LogBuffer
from volant_agent.manifest import encode_config_disk, parse

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SECRET = "the-vms-own-secret"
UNAUTHORIZED = (401, {"error": "unauthorized"})


@contextlib.asynccontextmanager
async def serve(handler: object) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=MAX_HEAD)  # type: ignore[arg-type]
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def echo_headers(request: Request) -> Response:
    """A workload that answers with the headers it was sent."""
    return json_response({"headers": dict(request.headers), "path": request.path})


@contextlib.asynccontextmanager
async def agent_with_workload(secret: str | None) -> AsyncIterator[tuple[str, list[int]]]:
    """(agent URL, power-off requests) for an agent whose workload echoes headers."""
    poweroffs: list[int] = []
    async with serve(connection_handler(echo_headers)) as workload:
        doc = {
            "name": "echo",
            "workload": {"entrypoint": ["unused"], "base_url": workload},
            "actions": {"peek": {"method": "GET", "path": "/peek"}},
        }
        agent = Agent(
            parse(doc), "test", LogBuffer(), None, lambda: poweroffs.append(1), secret=secret
        )
        async with serve(connection_handler(make_handler(agent))) as url:
            yield url, poweroffs


async def ask(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, object]:
    resp = await fetch(method, url + path, headers=headers, timeout=10)
    return resp.status, json.loads(resp.body) if resp.body else None


ROUTES = [
    ("GET", "/v1/status"),
    ("GET", "/v1/logs"),
    ("GET", "/v1/logs/stream"),
    ("POST", "/v1/poweroff"),
    ("POST", "/v1/workload/kill"),
    ("GET", "/v1/peek"),
    ("GET", "/v1/actions/peek"),
    ("GET", "/v1/anything"),
    ("GET", "/elsewhere"),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {SECRET_HEADER: ""}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET + "x"},
     {"Authorization": f"Bearer {SECRET}"}],
    ids=["missing", "empty", "wrong", "longer", "other-header"],
)  # fmt: skip
async def test_every_route_but_healthz_wants_the_secret(headers: dict[str, str]) -> None:
    async with agent_with_workload(SECRET) as (url, poweroffs):
        for method, path in ROUTES:
            assert await ask(url, method, path, headers) == UNAUTHORIZED, path
        assert await ask(url, "HEAD", "/v1/status", headers) == (401, None)
        # Without the secret the health probe says ok or degraded, and nothing else.
        assert await ask(url, "GET", "/healthz", headers) == (200, {"status": "ok"})
        await asyncio.sleep(0.3)  # a power-off would be requested 0.2 s after its answer
        assert poweroffs == []


async def test_with_the_secret_the_routes_answer_and_the_workload_never_sees_it() -> None:
    auth = {SECRET_HEADER: SECRET}
    async with agent_with_workload(SECRET) as (url, poweroffs):
        code, health = await ask(url, "GET", "/healthz", auth)
        assert (code, health) == (200, {"status": "ok", "agent": "ok", "workload": "none"})
        code, status = await ask(url, "GET", "/v1/status", auth)
        assert code == 200
        assert isinstance(status, dict)
        assert status["manifest"]["name"] == "echo"
        for path in ("/v1/peek", "/v1/actions/peek", "/v1/other"):
            code, echoed = await ask(url, "GET", path, {**auth, "X-Kept": "yes"})
            assert code == 200, path
            assert isinstance(echoed, dict)
            assert echoed["headers"]["x-kept"] == "yes"
            assert SECRET_HEADER not in echoed["headers"]
            assert SECRET not in json.dumps(echoed)
        assert await ask(url, "POST", "/v1/poweroff", auth) == (202, {"status": "powering off"})
        await asyncio.sleep(0.3)
        assert poweroffs == [1]


async def test_an_agent_without_a_secret_refuses_everyone() -> None:
    async with agent_with_workload(None) as (url, _poweroffs):
        for headers in ({}, {SECRET_HEADER: ""}, {SECRET_HEADER: SECRET}):
            assert await ask(url, "GET", "/v1/status", headers) == UNAUTHORIZED
            assert await ask(url, "GET", "/healthz", headers) == (200, {"status": "ok"})


def test_the_address_comes_from_ip_or_the_interface() -> None:
    assert static_address("192.168.127.5::192.168.127.1:255.255.255.0:web:eth0:off") == (
        "192.168.127.5"
    )
    assert static_address("::::web:eth0:dhcp") is None
    assert static_address("dhcp") is None
    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("no-such-if0") is None
    static = "console=ttyS0 ip=10.1.2.3::10.1.2.1:255.255.255.0:web:eth0:off quiet"
    assert asyncio.run(listen_address(static)) == "10.1.2.3"
    # dhcp: whatever the interface has got; vsock (no ip=): loopback only.
    dhcp = "ip=::::web:lo:dhcp"
    assert asyncio.run(listen_address(dhcp, interface="lo")) == "127.0.0.1"
    assert asyncio.run(listen_address("console=ttyS0")) == "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_main_listens_on_the_guests_address_only(tmp_path: Path) -> None:
    """With `ip=127.0.0.2::…` the agent answers on 127.0.0.2 and nowhere else (not 0.0.0.0)."""
    port = free_port()
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 ip=127.0.0.2::127.0.0.1:255.0.0.0:t:lo:off\n")
    disk = tmp_path / "config.img"
    disk.write_bytes(encode_config_disk(None, SECRET))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    argv = [sys.executable, "-m", "volant_agent", "--cmdline", str(cmdline), "--disk", str(disk),
            "--port", str(port), "--vsock", "off"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        while "listening on" not in line and line:
            line = proc.stdout.readline().decode()
        assert f"listening on 127.0.0.2:{port}" in line
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        status = asyncio.run(
            ask(f"http://127.0.0.2:{port}", "GET", "/v1/status", {SECRET_HEADER: SECRET})
        )
        assert status[0] == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
