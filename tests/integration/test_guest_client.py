"""volant.runtime.guest against the real agent: on loopback, then in one QEMU guest.

The loopback tests run the agent's own server (volant_agent.app) with the hello workload on
127.0.0.1, which covers every path of the client quickly; the guest test boots the agent
initramfs with the hello plugin in a private network namespace and drives it from a thread
inside that namespace (tests/integration/netns_thread.py), as volantd would from the host.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_agent import SECRET, free_port, hello_doc, start_agent
from tests.integration.netns_thread import run_in_netns
from tests.integration.test_agent_guest import SECRET as GUEST_SECRET
from tests.integration.test_agent_guest import (
    boot,
    guest_dir,
    hello_manifest,
    netns,
    run_dir,
    stop,
)
from tests.integration.test_qemu_guest import GUEST_IP, Guest, Netns
from volant.model import AgentEndpoint, Unavailable
from volant.runtime.guest import AGENT_PORT, GuestAgent, GuestReply

__all__ = ["guest_dir", "netns", "run_dir"]  # fixtures re-used from test_agent_guest

pytestmark = pytest.mark.integration

LOOPBACK = AgentEndpoint("127.0.0.1", SECRET)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def greet_line_after(agent: GuestAgent, ip: AgentEndpoint, greet: Any) -> dict[str, Any]:
    """Run the greet action, then read the log stream until the workload logs that request.

    Returns the log line; it must be newer than every line that existed before the action.
    """
    before = (await agent.request(ip, "GET", "/v1/logs?limit=1", timeout=10)).json()["lines"]
    newest = before[-1]["seq"] if before else 0
    reply = await greet()
    assert reply.status == 200, reply
    async with asyncio.timeout(30):
        async for line in agent.stream_logs(ip):
            if line["seq"] > newest and "GET /greet" in line["text"]:
                return line
    pytest.fail("the log stream ended before the request's line")


async def test_loopback_health_action_request_and_stream() -> None:
    async with (
        start_agent(hello_doc(free_port())) as running,
        GuestAgent(port=port_of(running.url)) as agent,
    ):
        healthy = await agent.wait_healthy(LOOPBACK, 15, interval=0.05)
        assert healthy == {"agent": "ok", "status": "ok", "workload": "healthy"}
        assert await agent.health(LOOPBACK, 5) == healthy

        echo = await agent.action(
            LOOPBACK, "echo", method="POST", body=b"hi there", content_type="text/plain",
            timeout=10,
        )  # fmt: skip
        assert (echo.status, echo.content_type, echo.json()) == (
            200,
            "application/json",
            {"echo": "hi there"},
        )
        missing = await agent.action(
            LOOPBACK, "nope", method="GET", body=b"", content_type="", timeout=10
        )
        assert missing.status == 404
        status = await agent.request(LOOPBACK, "GET", "/v1/status", timeout=10)
        assert status.json()["manifest"]["actions"] == ["echo", "greet"]

        async def greet() -> GuestReply:
            return await agent.action(
                LOOPBACK, "greet", method="GET", body=b"", content_type="", timeout=10
            )

        line = await greet_line_after(agent, LOOPBACK, greet)
        assert line["stream"] == "stdout"


async def test_unhealthy_workload_is_named_in_the_error() -> None:
    doc = hello_doc(
        free_port(), health_check={"path": "/health", "timeout_ms": 300, "start_period_ms": 500}
    )
    doc["workload"]["env"]["HELLO_UNHEALTHY"] = "1"  # type: ignore[index]
    async with start_agent(doc) as running, GuestAgent(port=port_of(running.url)) as agent:
        with pytest.raises(Unavailable, match='within 3 s \\(agent says workload "unhealthy"\\)'):
            await agent.wait_healthy(LOOPBACK, 3, interval=0.05)
        degraded = await agent.health(LOOPBACK, 5)
        assert degraded == {"agent": "ok", "status": "degraded", "workload": "unhealthy"}


async def test_an_agent_that_does_not_answer() -> None:
    port = free_port()  # nothing listens there
    async with GuestAgent(port=port) as agent:
        assert await agent.health(LOOPBACK, 1) is None
        started = time.monotonic()
        with pytest.raises(Unavailable, match=f"never answered at 127.0.0.1:{port} within 0.5 s"):
            await agent.wait_healthy(LOOPBACK, 0.5, interval=0.1)
        assert time.monotonic() - started < 2
        with pytest.raises(Unavailable, match=f"agent at 127.0.0.1:{port} did not answer"):
            await agent.request(LOOPBACK, "GET", "/v1/status", timeout=1)
        with pytest.raises(Unavailable, match=f"agent at 127.0.0.1:{port} did not answer"):
            await anext(agent.stream_logs(LOOPBACK))
    assert GuestAgent().address("fd00::2") == f"[fd00::2]:{AGENT_PORT}"


@pytest.fixture
async def hello_guest(
    netns: Netns, guest_dir: Path, run_dir: Path
) -> AsyncIterator[tuple[Netns, Guest]]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    g = await boot(netns, guest_dir, run_dir, hello_manifest())
    try:
        await g.hv.wait_ready(30)
        yield netns, g
    finally:
        await stop(g)


async def test_the_wrong_secret_is_refused_and_never_healthy() -> None:
    async with start_agent(hello_doc(free_port())) as running:
        port = port_of(running.url)
        wrong = AgentEndpoint("127.0.0.1", "not-the-secret")
        async with GuestAgent(port=port) as agent:
            status = await agent.request(wrong, "GET", "/v1/status", timeout=10)
            assert (status.status, status.json()) == (401, {"error": "unauthorized"})
            with pytest.raises(Unavailable, match="does not accept this VM's agent secret"):
                await agent.wait_healthy(wrong, 2, interval=0.05)
            # The health probe without the secret tells nothing about the workload.
            assert await agent.health(wrong, 5) == {"status": "ok"}
            with pytest.raises(Unavailable, match=r"refused the log stream \(HTTP 401\)"):
                await anext(agent.stream_logs(wrong))


async def test_client_drives_a_real_guest(hello_guest: tuple[Netns, Guest]) -> None:
    ns, g = hello_guest
    guest = AgentEndpoint(GUEST_IP, GUEST_SECRET)

    async def session() -> tuple[dict[str, Any], GuestReply, dict[str, Any]]:
        async with GuestAgent() as agent:
            healthy = await agent.wait_healthy(guest, 120)

            async def greet() -> GuestReply:
                return await agent.action(
                    guest, "greet", method="GET", body=b"", content_type="", timeout=10
                )

            reply = await greet()
            line = await greet_line_after(agent, guest, greet)
            return healthy, reply, line

    try:
        healthy, reply, line = await run_in_netns(ns.name, session)
    except Unavailable as exc:
        pytest.fail(f"{exc}\n{g.console()[-4000:]}")
    print(f"\nguest client: workload healthy {time.monotonic() - g.started:.2f}s after launch")
    assert healthy == {"agent": "ok", "status": "ok", "workload": "healthy"}
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert reply.json()["greeting"] == "hello from volant"
    assert line["stream"] == "stdout"
    assert line["text"] == "hello: GET /greet"
