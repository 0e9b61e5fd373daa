"""The seam between the engine and the guest agents it calls: replies, streams, exec links
and the workload passthrough (implemented in volant.runtime.guest, execlink and passthrough).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from volant.model import AgentEndpoint
from volant.model.execs import ExecEnd
from volant.model.operations import Headers, ProxyAnswer, ProxySocket


class GuestReplyLike(Protocol):
    """The agent's (or the workload's) HTTP answer, passed through unchanged."""

    @property
    def status(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    @property
    def body(self) -> bytes: ...


class GuestStreamLike(Protocol):
    """An answer of the agent whose body is read as it comes (volant.runtime.guest)."""

    @property
    def status(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    @property
    def headers(self) -> dict[str, str]: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self, limit: int = ...) -> bytes: ...


class ExecLink(Protocol):
    """A command running in a guest (volant.runtime.execlink.ExecLink)."""

    @property
    def end(self) -> ExecEnd | None: ...

    async def receive(self) -> tuple[str, bytes] | None: ...

    async def send_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, rows: int, cols: int) -> None: ...

    async def signal(self, name: str) -> None: ...

    async def close(self) -> None: ...


class Guest(Protocol):
    """The agent inside a guest, reached over HTTP at the guest's address with its secret."""

    async def wait_healthy(self, agent: AgentEndpoint, deadline: float) -> dict[str, Any]:
        """Return /healthz once the agent reports the workload healthy; Unavailable after
        deadline seconds, naming the last state seen."""
        ...

    async def request(
        self,
        agent: AgentEndpoint,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        content_type: str = "",
        timeout: float,
    ) -> GuestReplyLike: ...

    async def action(
        self,
        agent: AgentEndpoint,
        name: str,
        *,
        method: str,
        body: bytes,
        content_type: str,
        timeout: float,
    ) -> GuestReplyLike: ...

    def stream_logs(
        self, agent: AgentEndpoint, backlog: int = 50
    ) -> AsyncIterator[dict[str, Any]]: ...

    def stream(
        self,
        agent: AgentEndpoint,
        method: str,
        path: str,
        *,
        body: AsyncIterable[bytes] | None = None,
        length: int = 0,
        content_type: str = "",
        idle: float,
    ) -> AbstractAsyncContextManager[GuestStreamLike]: ...
    async def open_exec(self, agent: AgentEndpoint, request: dict[str, Any]) -> ExecLink:
        """Start a command through the agent; VolantError when it cannot start."""
        ...


class GuestProxy(Protocol):
    """The agent's streaming passthrough to the workload's own HTTP and WebSocket endpoints
    (volant.runtime.passthrough); target is the workload's path and query."""

    def proxy(
        self,
        agent: AgentEndpoint,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
    ) -> AbstractAsyncContextManager[ProxyAnswer]: ...

    def proxy_websocket(
        self, agent: AgentEndpoint, target: str, headers: Headers, protocols: Sequence[str]
    ) -> AbstractAsyncContextManager[ProxySocket]: ...
