"""The host's HTTP client for the guest agent (agent/README.md, "HTTP API") on port 8080.

Every request carries the VM's agent secret (X-Volant-Agent-Secret); the agent refuses any
other (401), /healthz aside, which then says only ok or degraded. The secret is never logged and
never part of an error message.

The agent serves one request per connection and answers `Connection: close`, so the session
never pools connections. Only transport failures raise (Unavailable, naming the guest's address):
any HTTP answer, a 502 or 504 from a workload behind the agent included, comes back as a
GuestReply for the caller to pass on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from ipaddress import ip_address
from types import TracebackType
from typing import Any, Self

import aiohttp

from volant.model import AGENT_PORT, AgentEndpoint, Unavailable
from volant.runtime.execlink import ExecLink, open_exec

log = logging.getLogger(__name__)

__all__ = ["AGENT_PORT", "GuestAgent", "GuestReply"]

SECRET_HEADER = "X-Volant-Agent-Secret"  # noqa: S105 - a header name, not a secret
STREAM_IDLE = 45.0  # three of the agent's 15 s keepalives
# One /healthz probe: long enough for a TCG guest under load, short enough to poll.
PROBE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class GuestReply:
    """One answer of the agent (or of the workload behind it), as received."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON; ValueError when it is not JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class GuestStream:
    """An answer of the agent whose body is read as it comes."""

    status: int
    content_type: str
    headers: dict[str, str]
    content: aiohttp.StreamReader

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece."""
        async for chunk in self.content.iter_any():
            yield chunk

    async def read(self, limit: int = 1 << 20) -> bytes:
        """At most limit bytes of the body (an error document)."""
        return await self.content.read(limit)


def _agent_error(address: str, exc: BaseException) -> Unavailable:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = "timed out"
    return Unavailable(
        f"the guest agent at {address} did not answer: {reason}",
        hint="the guest may still be booting, or its agent has stopped; see its console log",
    )


class GuestAgent:
    """A client for the agents of every guest; use it as an async context manager.

    It owns one aiohttp session, opened on entry and closed on exit.
    """

    def __init__(self, *, port: int = AGENT_PORT, connect_timeout: float = CONNECT_TIMEOUT):
        self._port = port
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # force_close: the agent closes every connection after one answer anyway.
        connector = aiohttp.TCPConnector(force_close=True)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("GuestAgent is used outside its `async with` block")
        return self._session

    def address(self, ip: str) -> str:
        """host:port of the agent of the guest at ip (IPv6 in brackets)."""
        host = f"[{ip}]" if ip_address(ip).version == 6 else ip
        return f"{host}:{self._port}"

    def where(self, agent: AgentEndpoint) -> str:
        """The agent's address for messages: host:port, or the relay socket of a network-less
        VM."""
        return f"unix:{agent.socket}" if agent.socket is not None else self.address(agent.address)

    def _url(self, agent: AgentEndpoint, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"agent paths start with '/', not {path!r}")
        if agent.socket is not None:
            return f"http://localhost:{self._port}{path}"
        return f"http://{self.address(agent.address)}{path}"

    @contextlib.asynccontextmanager
    async def _session_for(self, agent: AgentEndpoint) -> AsyncIterator[aiohttp.ClientSession]:
        """The shared session, or one on the relay socket of a network-less VM (a connector
        holds one socket path)."""
        if agent.socket is None:
            yield self.session
            return
        connector = aiohttp.UnixConnector(path=str(agent.socket), force_close=True)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            yield session

    @staticmethod
    def _headers(agent: AgentEndpoint) -> dict[str, str]:
        # A VM from before agent secrets has none until its next start; its agent wants none.
        return {SECRET_HEADER: agent.secret} if agent.secret else {}

    async def request(
        self,
        agent: AgentEndpoint,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        content_type: str = "",
        timeout: float,
    ) -> GuestReply:
        """Send one request to any agent route (path may carry a query) and read the answer.

        timeout bounds the whole exchange. Raises Unavailable when the agent does not answer.
        """
        headers = self._headers(agent)
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with (
                self._session_for(agent) as session,
                session.request(
                    method.upper(),
                    self._url(agent, path),
                    data=body or None,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                ) as resp,
            ):
                data = await resp.read()
                return GuestReply(resp.status, resp.headers.get("Content-Type", ""), data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _agent_error(self.where(agent), exc) from exc

    @contextlib.asynccontextmanager
    async def stream(
        self,
        agent: AgentEndpoint,
        method: str,
        path: str,
        *,
        body: AsyncIterable[bytes] | None = None,
        length: int = 0,
        content_type: str = "",
        idle: float,
    ) -> AsyncIterator[GuestStream]:
        """One request whose body (length bytes from body) and answer both stream; the answer
        is read inside the block. idle bounds each wait, not the whole exchange. Raises
        Unavailable when the agent does not answer (or breaks off)."""
        headers = self._headers(agent)
        if body is not None:
            # The agent takes no chunked bodies: the length goes ahead of the bytes.
            headers |= {"Content-Length": str(length), "Content-Type": content_type}
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=idle)
        try:
            async with (
                self._session_for(agent) as session,
                session.request(
                    method.upper(), self._url(agent, path), data=body, headers=headers,
                    timeout=timeout, allow_redirects=False,
                ) as resp,
            ):  # fmt: skip
                yield GuestStream(resp.status, resp.content_type, dict(resp.headers), resp.content)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _agent_error(self.where(agent), exc) from exc

    async def action(
        self,
        agent: AgentEndpoint,
        name: str,
        *,
        method: str,
        body: bytes,
        content_type: str,
        timeout: float,
    ) -> GuestReply:
        """Run the manifest action name through `/v1/actions/<name>`."""
        path = f"/v1/actions/{name}"
        return await self.request(
            agent, method, path, body=body, content_type=content_type, timeout=timeout
        )

    async def open_exec(self, agent: AgentEndpoint, request: dict[str, Any]) -> ExecLink:
        """Start a command through the agent's exec route (volant.runtime.execlink)."""
        return await open_exec(
            agent, request, port=self._port, connect_timeout=self._connect_timeout
        )

    async def _probe(
        self, agent: AgentEndpoint, timeout: float
    ) -> tuple[int, dict[str, Any]] | None:
        try:
            reply = await self.request(agent, "GET", "/healthz", timeout=timeout)
            doc = reply.json()
        except (Unavailable, ValueError):
            return None
        return (reply.status, doc) if isinstance(doc, dict) else None

    async def health(self, agent: AgentEndpoint, timeout: float) -> dict[str, Any] | None:
        """The agent's /healthz document, whether it answered 200 (healthy) or 503 (degraded).

        None when the agent does not answer within timeout, or answers with no JSON object.
        """
        probed = await self._probe(agent, timeout)
        return None if probed is None else probed[1]

    async def wait_healthy(
        self, agent: AgentEndpoint, deadline: float, *, interval: float = 0.25
    ) -> dict[str, Any]:
        """Poll /healthz until it answers 200 with the workload's state; return that document.

        The agent tells the workload's state only to a caller with the VM's secret: a 200
        without it is an agent that does not take this secret, never healthy. deadline is the
        budget in seconds. Raises Unavailable when it runs out, saying what the agent last
        reported (or that it never answered).
        """
        end = time.monotonic() + deadline
        last: dict[str, Any] | None = None
        while (left := end - time.monotonic()) > 0:
            probed = await self._probe(agent, min(PROBE_TIMEOUT, left))
            if probed is not None:
                status, last = probed
                if status == 200 and "workload" in last:
                    return last
                if last.get("workload") == "failed":  # it never will be: say why now
                    raise Unavailable(
                        f"the guest cannot start its workload: {last.get('error', 'unknown')}",
                        hint="the agent's log stream (/v1/logs) and the console log say more",
                    )
            left = end - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(interval, left))
        raise self._never_healthy(self.where(agent), deadline, last)

    def _never_healthy(
        self, where: str, deadline: float, last: dict[str, Any] | None
    ) -> Unavailable:
        if last is None:
            return Unavailable(
                f"the guest agent never answered at {where} within {deadline:g} s",
                hint="the guest may have failed to boot or configure its network; "
                "see its console log",
            )
        if "workload" not in last:
            return Unavailable(
                f"the guest agent at {where} does not accept this VM's agent secret",
                hint="its config disk may be missing or stale; restart the VM",
            )
        return Unavailable(
            f"workload never became healthy within {deadline:g} s "
            f'(agent says workload "{last.get("workload", "unknown")}")',
            hint="the agent's log stream (/v1/logs) shows the workload's output",
        )

    async def stream_logs(
        self, agent: AgentEndpoint, backlog: int = 50
    ) -> AsyncIterator[dict[str, Any]]:
        """Each log line of `/v1/logs/stream` (its SSE `data:` object) until the stream ends,
        starting with up to backlog recent lines.

        The agent sends a keepalive comment every 15 s, so a stream silent for STREAM_IDLE
        seconds belongs to a guest that vanished without closing it: that ends the stream.
        Raises Unavailable when the agent does not answer or refuses the stream.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=STREAM_IDLE
        )
        address = self.where(agent)
        url = self._url(agent, f"/v1/logs/stream?limit={backlog}")
        try:
            async with (
                self._session_for(agent) as session,
                session.get(url, timeout=timeout, headers=self._headers(agent)) as resp,
            ):
                if resp.status != 200:
                    raise Unavailable(
                        f"the guest agent at {address} refused the log stream (HTTP {resp.status})"
                    )
                async for event in _sse_data(resp.content):
                    yield event
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ServerTimeoutError,
        ) as exc:
            # The guest went away mid-stream (powered off, killed): the stream has ended.
            log.debug("log stream from %s ended: %s", address, exc)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _agent_error(address, exc) from exc


async def _sse_data(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects in the `data:` fields of a text/event-stream, event by event."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line:
            field, _, value = line.partition(":")
            # Comments (": keepalive") have an empty field name; id and event are not needed.
            if field == "data":
                data.append(value.removeprefix(" "))
            continue
        if not data:
            continue
        try:
            doc = json.loads("\n".join(data))
        except ValueError:
            log.debug("skipping a log event that is not JSON: %r", data)
            doc = None
        data = []
        if isinstance(doc, dict):
            yield doc
