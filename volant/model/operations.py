"""The workload's own HTTP API as volantd relays it: passthrough answers and sockets, and the
operations its OpenAPI document declares.

`volar vms operations` lists them and `volar vms call` (REST, MCP) calls one through the VM's
passthrough. An operation is named by its operationId; one the document leaves without an id
is named `METHOD:/path` (upstream Volant's form), which also names any operation.
Standard library only: the engine parses documents with it, the CLI prints what it answers.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from volant.model.errors import InvalidArgument, NotFound, Unavailable

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
TEMPLATE = re.compile(r"{([^{}/]+)}")
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ProxyAnswer:
    """The workload's answer through the passthrough: its body arrives as it is produced."""

    status: int
    headers: Headers  # hop-by-hop ones already dropped; repeated names (Set-Cookie) kept
    body: AsyncIterator[bytes]


class ProxySocket(Protocol):
    """A WebSocket to the workload through the agent; text frames are str, binary bytes."""

    @property
    def protocol(self) -> str | None:
        """The subprotocol the workload chose, if any."""
        ...

    @property
    def close_code(self) -> int | None: ...

    def messages(self) -> AsyncIterator[str | bytes]:
        """Frames from the workload until it closes."""
        ...

    async def send(self, message: str | bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(frozen=True)
class ApiOperation:
    """One method of one path of the document."""

    key: str  # the operationId, or METHOD:/path
    method: str  # upper case
    path: str  # the document's template, `{param}`s unfilled
    summary: str
    operation_id: str | None

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(TEMPLATE.findall(self.path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "operation_id": self.operation_id,
            "method": self.method,
            "path": self.path,
            "summary": self.summary,
            "path_params": list(self.path_params),
        }

    def target(self, params: Mapping[str, str], query: Sequence[tuple[str, str]] = ()) -> str:
        """The path (and query) to call: each `{param}` filled in, percent-encoded."""
        wanted = set(self.path_params)
        if missing := sorted(wanted - set(params)):
            raise InvalidArgument(
                f"operation {self.key} needs path parameter(s) {', '.join(missing)}",
                field="params",
                hint=f"give each as --param NAME=VALUE (path: {self.path})",
            )
        if extra := sorted(set(params) - wanted):
            raise InvalidArgument(
                f"operation {self.key} has no path parameter(s) {', '.join(extra)}",
                field="params",
                hint=f"its path is {self.path}; query parameters go in --query",
            )
        path = TEMPLATE.sub(lambda m: quote(str(params[m.group(1)]), safe=""), self.path)
        return path + (f"?{urlencode(list(query))}" if query else "")


def parse_operations(document: object) -> list[ApiOperation]:
    """Every operation of an OpenAPI 3 (or Swagger 2) document, in the document's order."""
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        raise Unavailable(
            "the workload's OpenAPI document has no `paths` object",
            hint="the manifest's `openapi` field names the document (`volar vms openapi`)",
        )
    found: list[ApiOperation] = []
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            continue
        for method in METHODS:
            spec = item.get(method)
            if not isinstance(spec, dict):
                continue
            op_id = spec.get("operationId")
            op_id = op_id if isinstance(op_id, str) and op_id else None
            summary = spec.get("summary") or spec.get("description") or ""
            summary = (
                summary.strip().splitlines()[0] if isinstance(summary, str) and summary else ""
            )
            key = op_id or f"{method.upper()}:{path}"
            found.append(ApiOperation(key, method.upper(), path, summary, op_id))
    return found


def find_operation(operations: Sequence[ApiOperation], key: str) -> ApiOperation:
    """The operation named key: its operationId, or METHOD:/path (method in any case)."""
    method, sep, path = key.partition(":")
    for op in operations:
        if key in (op.key, op.operation_id) or (
            sep and (method.upper(), path) == (op.method, op.path)
        ):
            return op
    known = ", ".join(op.key for op in operations[:20]) or "none"
    raise NotFound(
        f"the workload declares no operation {key!r} (its operations: {known})",
        field="operation",
        hint="`volar vms operations NAME` lists them",
    )
