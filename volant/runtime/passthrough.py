"""The host's side of the agent's streaming passthrough (`/v1/proxy/<path>`, agent/README.md).

`AgentPassthrough` is the guest-agent client (GuestAgent) plus two verbs that stream: an HTTP
exchange whose request body goes up and answer comes down piece by piece (never whole in
memory, no size cap), and a WebSocket to the workload (the agent relays the workload's own 101
and then splices bytes; aiohttp checks the handshake end to end). Neither decompresses nor
re-encodes: the workload's bytes reach the caller as they were sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import aiohttp
from yarl import URL

from volant.model import AgentEndpoint, NotFound, Unavailable
from volant.model.operations import Headers, ProxyAnswer

from .guest import GuestAgent, _agent_error

PREFIX = "/v1/proxy"
PROXY_ERROR_HEADER = "X-Volant-Proxy-Error"
# A stream silent this long belongs to a guest that went away; long polls fit well within.
IDLE = 300.0
MAX_MESSAGE = 16 * 1024 * 1024  # one WebSocket frame (a DevTools screenshot fits)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "proxy-authenticate", "proxy-authorization"}
)  # fmt: skip


class AgentPassthrough(GuestAgent):
    """GuestAgent with the passthrough verbs (volant.engine.ports.GuestProxy)."""

    @contextlib.asynccontextmanager
    async def proxy(
        self,
        agent: AgentEndpoint,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
    ) -> AsyncIterator[ProxyAnswer]:
        """One exchange with the workload at target (its path and query); the answer's body
        streams while the context is open."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=IDLE)
        sent = [*headers, *self._headers(agent).items()]
        try:
            async with (
                self._session_for(agent) as session,
                session.request(
                    method,
                    URL(self._url(agent, PREFIX + target), encoded=True),
                    headers=sent,
                    data=body,
                    timeout=timeout,
                    allow_redirects=False,
                    auto_decompress=False,
                ) as resp,
            ):
                _raise_proxy_error(resp.status, resp.headers, await _error_text(resp))
                kept = tuple((k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP)
                yield ProxyAnswer(resp.status, kept, resp.content.iter_any())
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise _agent_error(self.where(agent), exc) from exc

    @contextlib.asynccontextmanager
    async def proxy_websocket(
        self, agent: AgentEndpoint, target: str, headers: Headers, protocols: Sequence[str]
    ) -> AsyncIterator[_Socket]:
        """A WebSocket to the workload at target, through the agent."""
        try:
            async with (
                self._session_for(agent) as session,
                session.ws_connect(
                    URL(self._url(agent, PREFIX + target), encoded=True),
                    headers=[*headers, *self._headers(agent).items()],
                    protocols=tuple(protocols),
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                    max_msg_size=MAX_MESSAGE,
                    autoping=True,
                ) as ws,
            ):
                yield _Socket(ws)
        except aiohttp.WSServerHandshakeError as exc:
            raise Unavailable(
                f"the workload refused the WebSocket at {target}: HTTP {exc.status}",
                hint="the path must be one the workload upgrades (`volar vms operations` "
                "lists what its OpenAPI document declares)",
            ) from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise _agent_error(self.where(agent), exc) from exc


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    if PROXY_ERROR_HEADER not in resp.headers:
        return ""
    with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
        doc = await resp.json(content_type=None)
        if isinstance(doc, dict):
            return str(doc.get("error", ""))
    return ""


def _raise_proxy_error(status: int, headers: object, text: str) -> None:
    """The agent's own passthrough failures (marked by its header) become VolantErrors; the
    workload's answers, errors included, pass through as they are."""
    if not text:
        return
    if status == 404:
        raise NotFound(text, hint="the plugin's manifest needs a workload base_url")
    raise Unavailable(f"passthrough: {text}", hint="the workload's log: `volar vms logs NAME`")


class _Socket:
    """ProxySocket on an aiohttp client WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    @property
    def protocol(self) -> str | None:
        return self._ws.protocol

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def messages(self) -> AsyncIterator[str | bytes]:
        async for message in self._ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                yield str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                yield bytes(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                break

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._ws.send_str(message)
        else:
            await self._ws.send_bytes(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, message=reason.encode())
