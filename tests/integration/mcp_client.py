"""Drive volantd's MCP endpoint with the official MCP Python SDK client.

Run inside the daemon's network namespace (the endpoint listens on its loopback):
    ip netns exec NS python tests/integration/mcp_client.py URL [--key KEY] < steps.json
or against its unix socket with --uds PATH (or import `session_steps`). Steps are JSON objects:
{"op": "list_tools"}, {"op": "call_tool", "name": ..., "arguments": {...}},
{"op": "list_resources"}, {"op": "list_resource_templates"}, {"op": "read_resource", "uri": ...}.
Prints {"initialize": ..., "results": [...]} or, when the session fails, {"failure": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx2
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel

KEY_HEADER = "X-Volant-API-Key"


def dump(model: BaseModel) -> dict[str, Any]:
    result: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return result


def call(tool: str, /, **arguments: Any) -> dict[str, Any]:
    """The step that calls tool with arguments."""
    return {"op": "call_tool", "name": tool, "arguments": arguments}


def results(report: dict[str, Any]) -> list[dict[str, Any]]:
    assert "failure" not in report, report
    answers: list[dict[str, Any]] = report["results"]
    return answers


def ok(result: dict[str, Any]) -> dict[str, Any]:
    """A successful tool result's structured content, which its text repeats."""
    assert not result.get("isError"), result
    structured: dict[str, Any] = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == structured
    return structured


def tool_error(result: dict[str, Any]) -> dict[str, Any]:
    """A tool error result's error object: code, message, and field and hint when known."""
    assert result.get("isError") is True, result
    error: dict[str, Any] = result["structuredContent"]["error"]
    assert result["content"][0]["text"].startswith(f"{error['code']}: ")
    return error


def over_unix(api: str, steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The steps in this process, on volantd's unix socket (api is `unix:PATH`)."""
    path = api.removeprefix("unix:")
    return asyncio.run(session_steps("http://localhost/api/v1/mcp", steps, uds=path))


async def step(session: ClientSession | Client, op: dict[str, Any]) -> dict[str, Any]:
    """One step's result, or {"error": ...} for a JSON-RPC error answer."""
    try:
        match op["op"]:
            case "list_tools":
                return dump(await session.list_tools())
            case "call_tool":
                return dump(await session.call_tool(op["name"], op.get("arguments")))
            case "list_resources":
                return dump(await session.list_resources())
            case "list_resource_templates":
                return dump(await session.list_resource_templates())
            case "read_resource":
                return dump(await session.read_resource(op["uri"]))
            case other:
                raise ValueError(f"unknown step {other!r}")
    except MCPError as exc:
        return {"error": dump(exc.error)}


async def session_steps(
    url: str,
    steps: Sequence[dict[str, Any]],
    *,
    key: str = "",
    uds: str | None = None,
    modern: bool = False,
) -> dict[str, Any]:
    """Open a session, run the steps, and report; a transport failure is reported too.

    By default a ClientSession with the initialize handshake (protocol 2025-11-25); with
    `modern`, the SDK's high-level Client, which probes for and speaks 2026-07-28.
    """
    headers = {KEY_HEADER: key} if key else {}
    transport = httpx2.AsyncHTTPTransport(uds=uds) if uds else None
    timeout = httpx2.Timeout(30.0, read=180.0)
    http = httpx2.AsyncClient(headers=headers, transport=transport, timeout=timeout)
    try:
        async with http:
            if modern:
                return await _modern(streamable_http_client(url, http_client=http), steps)
            async with (
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                init = await session.initialize()
                results = [await step(session, op) for op in steps]
                return {"initialize": dump(init), "results": results}
    except Exception as exc:  # the point: report how the SDK client failed
        return {"failure": f"{type(exc).__name__}: {exc}", "detail": repr(exc)}


async def _modern(transport: Any, steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    async with Client(transport) as client:
        info = client.server_info
        init = {
            "protocolVersion": client.protocol_version,
            "serverInfo": dump(info) if info is not None else None,
        }
        return {"initialize": init, "results": [await step(client, op) for op in steps]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--key", default="")
    parser.add_argument("--uds", help="connect to this unix socket instead")
    parser.add_argument("--modern", action="store_true", help="protocol 2026-07-28 (Client)")
    args = parser.parse_args()
    steps = json.load(sys.stdin)
    report = asyncio.run(
        session_steps(args.url, steps, key=args.key, uds=args.uds, modern=args.modern)
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
