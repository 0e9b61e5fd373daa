"""The agent's streaming passthrough (/v1/proxy/<path>): heads rewritten, bodies streamed both
ways as they come, and after a workload's 101 the connection spliced both ways."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from volant_agent.app import Agent, make_handler
from volant_agent.http import MAX_HEAD, Request, Response, connection_handler, json_response
from volant_agent.logs import LogBuffer
from volant_agent.manifest import parse
from volant_agent.passthrough import PROXY_ERROR_HEADER, streams_body

from volant.model import AgentEndpoint, NotFound, Unavailable
from volant.runtime.passthrough import AgentPassthrough

pytestmark = pytest.mark.unit

SECRET = "the-vms-own-secret"


class Workload:
    """A workload on the agent's own HTTP server: plain, upload, streamed and upgrade routes."""

    def __init__(self) -> None:
        self.second_chunk = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        if request.path == "/base/plain":
            return json_response({"headers": dict(request.headers), "query": request.query})
        if request.path == "/base/upload":
            assert request.reader is not None
            digest, size = hashlib.sha256(), 0
            while size < int(request.headers["content-length"]):
                data = await request.reader.read(65536)
                digest.update(data)
                size += len(data)
            return json_response({"size": size, "sha256": digest.hexdigest()})
        if request.path == "/base/stream":
            return Response(takeover=self.stream)
        if request.path == "/base/upgrade":
            return Response(takeover=self.echo)
        if request.path == "/base/continue":
            return Response(takeover=self.expect_continue)
        return json_response({"error": "workload: not found"}, 404)

    async def stream(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n")
        writer.write(b"Set-Cookie: b=2\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await self.second_chunk.wait()  # produced only once the client has the first one
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    async def expect_continue(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        data = await reader.readexactly(5)  # sent only once the client saw the 100
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + data.upper())
        await writer.drain()

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()


@contextlib.asynccontextmanager
async def serve(handler: object) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=MAX_HEAD)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def agent_before(workload: Workload) -> AsyncIterator[int]:
    """The agent's port; its workload's base_url has a path, which the passthrough keeps."""
    async with serve(
        connection_handler(
            workload.handle, streams=lambda path: path in ("/base/upload", "/base/continue")
        )
    ) as port:
        doc = {
            "name": "w",
            "workload": {"entrypoint": ["x"], "base_url": f"http://127.0.0.1:{port}/base"},
        }
        agent = Agent(parse(doc), "test", LogBuffer(), None, lambda: None, secret=SECRET)
        async with serve(
            connection_handler(make_handler(agent), streams=streams_body)
        ) as agent_port:
            yield agent_port


async def exchange(port: int, head: str, body: bytes = b"") -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    answer, _, rest = data.partition(b"\r\n\r\n")
    return answer.decode(), rest


def test_streams_body_only_under_the_prefix() -> None:
    assert streams_body("/v1/proxy")
    assert streams_body("/v1/proxy/a/b")
    assert not streams_body("/v1/proxyx")
    assert not streams_body("/v1/status")


async def test_plain_request_drops_the_secret_and_hop_headers_and_keeps_the_query() -> None:
    async with agent_before(Workload()) as port:
        head, body = await exchange(
            port,
            "GET /v1/proxy/plain?a=1&b=2 HTTP/1.1\r\nHost: agent\r\n"
            f"X-Volant-Agent-Secret: {SECRET}\r\nKeep-Alive: 5\r\nX-Mine: yes\r\n"
            "Connection: close\r\n\r\n",
        )
    assert head.startswith("HTTP/1.1 200")
    seen = json.loads(body)
    assert seen["query"] == "a=1&b=2"
    assert seen["headers"]["x-mine"] == "yes"
    assert seen["headers"]["host"].startswith("127.0.0.1:")
    assert "x-volant-agent-secret" not in seen["headers"]
    assert "keep-alive" not in seen["headers"]


async def test_no_secret_no_passthrough() -> None:
    async with agent_before(Workload()) as port:
        head, body = await exchange(port, "GET /v1/proxy/plain HTTP/1.1\r\n\r\n")
    assert head.startswith("HTTP/1.1 401")
    assert json.loads(body) == {"error": "unauthorized"}


async def test_request_body_streams_up_beyond_the_agents_own_limit() -> None:
    data = bytes(range(256)) * 12_000  # 3 MiB, over the agent's 1 MiB MAX_BODY
    async with agent_before(Workload()) as port:
        head, body = await exchange(
            port,
            f"POST /v1/proxy/upload HTTP/1.1\r\nX-Volant-Agent-Secret: {SECRET}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n",
            data,
        )
    assert head.startswith("HTTP/1.1 200"), head
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_a_chunked_answer_arrives_chunk_by_chunk() -> None:
    workload = Workload()
    async with agent_before(workload) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/proxy/stream HTTP/1.1\r\nX-Volant-Agent-Secret: {SECRET}\r\n\r\n".encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        first = await asyncio.wait_for(reader.readuntil(b"first\r\n"), 10)
        assert not workload.second_chunk.is_set()  # the first chunk came before the second exists
        workload.second_chunk.set()
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert head.startswith("HTTP/1.1 200")
    assert head.count("Set-Cookie") == 2
    assert "Transfer-Encoding: chunked" in head
    assert "Connection: close" in head
    assert first == b"5\r\nfirst\r\n"
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"


async def test_an_interim_100_continue_goes_to_the_host_before_the_final_answer() -> None:
    async with agent_before(Workload()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/proxy/continue HTTP/1.1\r\nX-Volant-Agent-Secret: {SECRET}\r\n"
            "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(b"hello")
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nHELLO")


async def test_after_the_workloads_101_bytes_are_spliced_both_ways() -> None:
    async with agent_before(Workload()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/proxy/upgrade HTTP/1.1\r\nX-Volant-Agent-Secret: {SECRET}\r\n"
            "Connection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        assert head.startswith("HTTP/1.1 101")
        assert "Upgrade: echo" in head
        for word in (b"ping", b"again"):
            writer.write(word)
            assert await asyncio.wait_for(reader.readexactly(len(word)), 10) == word.upper()
        writer.write_eof()  # the host leaves: the workload sees the end and closes too
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_unreachable_workload_and_missing_base_url_are_the_proxys_own_errors() -> None:
    doc = {"name": "w", "workload": {"entrypoint": ["x"], "base_url": "http://127.0.0.1:1"}}
    for manifest in (parse(doc), None):
        agent = Agent(manifest, "test", LogBuffer(), None, lambda: None, secret=SECRET)
        async with serve(connection_handler(make_handler(agent), streams=streams_body)) as port:
            head, body = await exchange(
                port, f"GET /v1/proxy/x HTTP/1.1\r\nX-Volant-Agent-Secret: {SECRET}\r\n\r\n"
            )
        assert head.split()[1] == ("502" if manifest else "404")
        assert f"{PROXY_ERROR_HEADER}: 1" in head
        assert "error" in json.loads(body)


async def test_volantds_client_streams_through_the_agent_and_maps_its_errors() -> None:
    """volant.runtime.passthrough against this agent: answers stream, the agent's own errors
    become VolantErrors, the workload's own pass through."""
    workload = Workload()
    async with agent_before(workload) as port, AgentPassthrough(port=port) as client:
        agent = AgentEndpoint("127.0.0.1", SECRET)
        async with client.proxy(agent, "GET", "/stream", (("X-Mine", "y"),), None) as answer:
            assert answer.status == 200
            cookies = [v for k, v in answer.headers if k.lower() == "set-cookie"]
            assert cookies == ["a=1", "b=2"]
            assert not any(k.lower() == "transfer-encoding" for k, _v in answer.headers)
            first = await anext(answer.body)
            assert first == b"first"
            workload.second_chunk.set()
            assert b"".join([chunk async for chunk in answer.body]) == b"second"
        async with client.proxy(agent, "GET", "/missing", (), None) as answer:
            assert answer.status == 404  # the workload's own
        with pytest.raises(Unavailable, match="refused the WebSocket"):
            async with client.proxy_websocket(agent, "/plain", (), ()):
                pass
    for manifest, error in ((None, NotFound), ({"base_url": "http://127.0.0.1:1"}, Unavailable)):
        doc = {"name": "w", "workload": {"entrypoint": ["x"], **(manifest or {})}}
        bare = Agent(parse(doc), "test", LogBuffer(), None, lambda: None, secret=SECRET)
        async with (
            serve(connection_handler(make_handler(bare), streams=streams_body)) as port,
            AgentPassthrough(port=port) as client,
        ):
            with pytest.raises(error):
                async with client.proxy(AgentEndpoint("127.0.0.1", SECRET), "GET", "/", (), None):
                    pass
