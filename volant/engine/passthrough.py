"""The workload's own HTTP API, reached through its VM's agent: the passthrough and the
operations of its OpenAPI document.

A service object of the engine (Engine.passthrough). Every call goes host → agent → workload,
the agent found as for every guest verb (`agent_endpoint`: the guest's address, or the relay
socket of a network-less VM), so it works in every network mode. Nothing here changes state;
each call is logged with who asked for what path, never with bodies or headers (they carry
the workload's credentials).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import yaml

from volant.config import Config
from volant.engine.agentports import GuestProxy
from volant.engine.guest import agent_endpoint
from volant.engine.ports import Store
from volant.model import InvalidArgument, Unavailable
from volant.model.operations import (
    ApiOperation,
    Headers,
    ProxyAnswer,
    ProxySocket,
    find_operation,
    parse_operations,
)
from volant.model.validate import validate_name

log = logging.getLogger("volant.engine.passthrough")

Document = Callable[[str], Awaitable[tuple[str, bytes]]]
# What call_operation keeps of an answer (MCP, `volar vms call`); the proxy route has no cap.
MAX_CALL_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class OperationAnswer:
    """The workload's whole answer to one operation call, cut at MAX_CALL_ANSWER bytes."""

    status: int
    content_type: str
    body: bytes
    truncated: bool


class Passthrough:
    """Passthrough exchanges, WebSockets and OpenAPI operations of running VMs."""

    def __init__(
        self, config: Config, store: Store, proxy: GuestProxy | None, document: Document
    ) -> None:
        self._config = config
        self._store = store
        self._proxy = proxy
        self._document = document  # Engine.vm_openapi: the document the manifest names

    def _client(self) -> GuestProxy:
        if self._proxy is None:
            raise Unavailable("this volantd has no passthrough to guest agents")
        return self._proxy

    @contextlib.asynccontextmanager
    async def request(
        self,
        name: str,
        method: str,
        target: str,
        headers: Headers = (),
        body: AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[ProxyAnswer]:
        """Send method target (the workload's path and query, under its base_url) to the
        VM's workload; its answer streams while the context is open."""
        if not target.startswith("/"):
            raise InvalidArgument(f"a workload path starts with '/', not {target!r}", field="path")
        vm = await self._store.get_vm(validate_name(name))
        agent = agent_endpoint(vm, self._config)
        log.info("passthrough %s %s to VM %s", method, target.split("?", maxsplit=1)[0], vm.name)
        async with self._client().proxy(agent, method.upper(), target, headers, body) as answer:
            yield answer

    @contextlib.asynccontextmanager
    async def websocket(
        self, name: str, target: str, headers: Headers = (), protocols: Sequence[str] = ()
    ) -> AsyncIterator[ProxySocket]:
        """A WebSocket to the VM's workload at target (path and query)."""
        if not target.startswith("/"):
            raise InvalidArgument(f"a workload path starts with '/', not {target!r}", field="path")
        vm = await self._store.get_vm(validate_name(name))
        agent = agent_endpoint(vm, self._config)
        log.info("passthrough WebSocket %s to VM %s", target.split("?", maxsplit=1)[0], vm.name)
        async with self._client().proxy_websocket(agent, target, headers, protocols) as socket:
            yield socket

    async def operations(self, name: str) -> list[ApiOperation]:
        """The operations the VM's OpenAPI document (the manifest's `openapi`) declares."""
        content_type, body = await self._document(name)
        return parse_operations(load_document(content_type, body))

    async def call_operation(
        self,
        name: str,
        operation: str,
        *,
        params: Mapping[str, str] | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
    ) -> OperationAnswer:
        """Call one operation (by operationId or METHOD:/path) through the passthrough; a
        JSON body (any value but None) goes as application/json."""
        op = find_operation(await self.operations(name), operation)
        target = op.target(params or {}, query)
        headers: Headers = (("Accept", "application/json, */*"),)
        data = None
        if body is not None:
            raw = json.dumps(body).encode()
            headers += (("Content-Type", "application/json"), ("Content-Length", str(len(raw))))
            data = _once(raw)
        async with self.request(name, op.method, target, headers, data) as answer:
            kept, truncated = bytearray(), False
            async for chunk in answer.body:
                kept += chunk
                if len(kept) > MAX_CALL_ANSWER:
                    del kept[MAX_CALL_ANSWER:]
                    truncated = True
                    break
            content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
            return OperationAnswer(answer.status, content_type, bytes(kept), truncated)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def load_document(content_type: str, body: bytes) -> object:
    """An OpenAPI document, JSON or YAML (YAML is a superset; JSON is tried first)."""
    try:
        return json.loads(body)
    except ValueError:
        pass
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise Unavailable(
            f"the workload's OpenAPI document ({content_type or 'no content type'}) is neither "
            f"JSON nor YAML: {exc}"
        ) from exc
