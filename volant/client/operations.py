"""Client calls for a workload's OpenAPI operations (`volar vms operations`, `volar vms call`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from volant.client.errors import problem
from volant.client.http import PROBLEM_JSON, Reply, VolantClient


def _vm(name: str) -> str:
    return f"/api/v1/vms/{quote(name, safe='')}"


async def vm_operations(client: VolantClient, name: str) -> list[dict[str, Any]]:
    """The operations of the VM workload's OpenAPI document."""
    return await client.request_items(f"{_vm(name)}/operations", "operations")


async def call_operation(
    client: VolantClient,
    name: str,
    operation: str,
    *,
    params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: Any = None,
) -> Reply:
    """The workload's answer to one operation, whatever its status; ApiError when volantd
    itself refuses (problem+json: no such operation, VM not running, …)."""
    payload = {"params": dict(params), "query": [list(q) for q in query], "body": body}
    path = f"{_vm(name)}/operations/{quote(operation, safe='')}"
    reply = await client.raw("POST", path, json.dumps(payload).encode())
    if reply.status >= 400 and reply.content_type == PROBLEM_JSON:
        raise problem(reply.status, reply.body.decode(errors="replace"))
    return reply
