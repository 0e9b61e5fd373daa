"""The MCP endpoint of a real volantd (API key set, QEMU guests started paused) driven by the
official MCP SDK client: over TCP inside the daemon's network namespace with the key, and over
the unix socket as root and as an unprivileged user."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    Daemon,
    build_guest,
    netns,
    raw,
    running_daemon,
    start_daemon,
    stop_daemon,
)
from tests.integration.mcp_client import call, ok, over_unix, results, tool_error

pytestmark = pytest.mark.integration

KEY = "mcp-test-key"
URL = "http://127.0.0.1:7777/api/v1/mcp"
CLIENT = Path(__file__).with_name("mcp_client.py")
NOBODY = 65534
TOOLS = {
    "exec_command",
    "list_vms",
    "get_vm",
    "create_vm",
    "delete_vm",
    "start_vm",
    "stop_vm",
    "restart_vm",
    "list_plugins",
    "list_builds",
    "call_action",
    "vm_logs",
    "console_log",
    "list_events",
    "system_status",
    "list_volumes",
    "get_volume",
    "create_volume",
    "resize_volume",
    "delete_volume",
    "read_file",
    "write_file",
    "list_operations",
    "call_operation",
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    build_guest()
    # Not under pytest's private tmp: an unprivileged client must reach the unix socket.
    tmp = Path(tempfile.mkdtemp(prefix="volant-mcp-"))
    tmp.chmod(0o755)
    try:
        with netns() as ns:
            # Paused guests never power off gracefully: do not wait long for them.
            settings = {"api.key": KEY, "runtime.start_paused": True, "runtime.stop_timeout": 1.0}
            d = start_daemon(ns, tmp, settings)
            try:
                yield d
                assert "broke the OpenAPI document" not in d.log_text()
                assert "Traceback" not in d.log_text()
            finally:
                stop_daemon(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def over_tcp(
    daemon: Daemon, steps: Sequence[dict[str, Any]], key: str = KEY, *, modern: bool = False
) -> dict[str, Any]:
    """The SDK client in the daemon's network namespace, on its TCP port."""
    argv = ["ip", "netns", "exec", daemon.ns, sys.executable, str(CLIENT), URL, "--key", key]
    return _client([*argv, "--modern"] if modern else argv, steps)


def as_nobody(
    daemon: Daemon, steps: Sequence[dict[str, Any]], *, modern: bool = False
) -> dict[str, Any]:
    """The SDK client as an unprivileged user, on the unix socket."""
    sock = daemon.api.removeprefix("unix:")
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv = ["setpriv", *ids, sys.executable, str(CLIENT), "http://localhost/api/v1/mcp"]
    argv += ["--uds", sock, *(["--modern"] if modern else [])]
    return _client(argv, steps)


def _client(argv: list[str], steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    proc = subprocess.run(
        argv, input=json.dumps(steps), capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_initialize_and_tools(daemon: Daemon) -> None:
    report = over_tcp(daemon, [{"op": "list_tools"}])
    init = report["initialize"]
    assert init["protocolVersion"] == "2025-11-25"
    assert init["serverInfo"]["name"] == "volant"
    assert set(init["capabilities"]) >= {"tools", "resources"}
    tools = {tool["name"]: tool for tool in results(report)[0]["tools"]}
    assert set(tools) == TOOLS
    create = tools["create_vm"]["inputSchema"]
    assert create["required"] == ["name", "plugin"]
    assert create["additionalProperties"] is False
    assert create["properties"]["name"]["pattern"] == "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
    assert {"type": "integer", "minimum": 1} in create["properties"]["cpu_cores"]["anyOf"]
    assert tools["list_vms"]["annotations"]["readOnlyHint"] is True
    assert tools["delete_vm"]["annotations"]["destructiveHint"] is True
    assert tools["exec_command"]["annotations"]["destructiveHint"] is True


def test_volumes(daemon: Daemon) -> None:
    steps = [
        call("create_volume", name="mcpvol", size="32M"),
        call(
            "create_vm",
            name="mcpv",
            plugin="demo",
            volumes=[{"name": "mcpvol", "path": "/data", "read_only": True}],
        ),
        call("get_vm", name="mcpv"),
        call("get_volume", name="mcpvol"),
        call("resize_volume", name="mcpvol", size="64M"),
        call("delete_volume", name="mcpvol"),
        call("delete_vm", name="mcpv"),
        call("resize_volume", name="mcpvol", size=64 << 20),
        call("list_volumes"),
        call("delete_volume", name="mcpvol"),
        call("list_volumes"),
    ]
    made, vm, got_vm, got, busy, refused, _gone, grown, listed, deleted, after = results(
        over_tcp(daemon, steps)
    )
    assert (ok(made)["name"], ok(made)["size_bytes"]) == ("mcpvol", 32 << 20)
    assert ok(vm)["status"] == "running"
    assert ok(got_vm)["volumes"] == [{"name": "mcpvol", "path": "/data", "read_only": True}]
    assert (ok(got)["in_use_by"], ok(got)["formatted"]) == ("mcpv", True)
    assert tool_error(busy)["code"] == "InvalidState"
    assert tool_error(refused)["code"] == "Conflict"
    assert ok(grown)["size_bytes"] == 64 << 20
    assert [v["name"] for v in ok(listed)["volumes"]] == ["mcpvol"]
    assert ok(deleted) == {"deleted": "mcpvol"}
    assert ok(after) == {"volumes": [], "total": 0}


def test_vm_lifecycle(daemon: Daemon) -> None:
    steps = [
        call("create_vm", name="mcp1", plugin="demo", cpu_cores=1, memory_mb=128),
        call("get_vm", name="mcp1"),
        call("list_vms", plugin="demo"),
        call("stop_vm", name="mcp1"),
        call("start_vm", name="mcp1"),
        call("delete_vm", name="mcp1"),
        call("list_vms"),
    ]
    created, got, listed, stopped, started, deleted, after = results(over_tcp(daemon, steps))
    vm = ok(created)
    assert (vm["name"], vm["status"], vm["plugin"]) == ("mcp1", "running", "demo")
    assert (vm["cpu_cores"], vm["memory_mb"]) == (1, 128)
    assert vm["ip_address"] == "192.168.127.2"
    usage = ok(got)["usage"]
    assert usage.keys() == {"cpu_seconds", "memory_bytes", "disk_bytes", "disk_size_bytes"}
    assert usage["disk_bytes"] is None  # an initramfs plugin's VM has no disk
    assert ok(got)["mac_address"] == vm["mac_address"]
    assert [v["name"] for v in ok(listed)["vms"]] == ["mcp1"]
    assert ok(listed)["total"] == 1
    assert ok(stopped)["status"] == "stopped"
    assert ok(started)["status"] == "running"
    assert ok(deleted) == {"deleted": "mcp1"}
    assert ok(after) == {"vms": [], "total": 0}
    assert daemon.call(lambda c: c.list_vms()) == []


def test_what_an_agent_reads_when_a_vm_misbehaves(daemon: Daemon) -> None:
    steps = [
        call("create_vm", name="seen1", plugin="demo"),
        call("list_events", vm="seen1"),
        call("list_events", vm="seen1", types=["VM_RUNNING"], limit=1),
        call("console_log", name="seen1", lines=5),
        call("system_status"),
        call("call_action", name="seen1", action="greet"),
        call("vm_logs", name="ghost"),
        call("delete_vm", name="seen1"),
    ]
    created, events, running, console, status, action, logs, _ = results(over_tcp(daemon, steps))
    assert ok(created)["status"] == "running"
    kinds = [event["type"] for event in ok(events)["events"]]
    assert kinds[0] == "VM_CREATED"
    assert "VM_RUNNING" in kinds
    [only] = ok(running)["events"]
    assert (only["type"], only["vm"]) == ("VM_RUNNING", "seen1")
    assert ok(console) == {"text": ""}  # paused from the start: it never printed
    assert ok(status)["vms_by_status"]["running"] >= 1
    assert ok(status)["ip_pool_leased"] >= 1
    assert ok(status)["host"]["cpus"] >= 1
    assert tool_error(action)["code"] == "NotFound"  # the demo plugin declares no actions
    assert tool_error(logs)["code"] == "NotFound"


def test_the_2026_protocol_of_the_high_level_client(daemon: Daemon) -> None:
    """The SDK's `Client` probes with server/discover and speaks the per-request envelope."""
    steps = [
        {"op": "list_tools"},
        call("create_vm", name="modern1", plugin="demo"),
        call("create_vm", name="modern1", plugin="demo"),
        call("delete_vm", name="modern1"),
        {"op": "read_resource", "uri": "volant://plugins/demo/manifest"},
    ]
    report = over_tcp(daemon, steps, modern=True)
    assert report["initialize"]["protocolVersion"] == "2026-07-28"
    assert report["initialize"]["serverInfo"]["name"] == "volant"
    listed, created, again, deleted, read = results(report)
    assert {tool["name"] for tool in listed["tools"]} == TOOLS
    assert ok(created)["status"] == "running"
    assert tool_error(again)["code"] == "NameTaken"
    assert ok(deleted) == {"deleted": "modern1"}
    assert json.loads(read["contents"][0]["text"])["name"] == "demo"


def test_plugins_and_their_manifests(daemon: Daemon) -> None:
    uri = "volant://plugins/demo/manifest"
    steps = [
        call("list_plugins"),
        {"op": "list_resources"},
        {"op": "list_resource_templates"},
        {"op": "read_resource", "uri": uri},
        {"op": "read_resource", "uri": "volant://plugins/ghost/manifest"},
        {"op": "read_resource", "uri": "file:///etc/passwd"},
    ]
    plugins, listed, templates, read, ghost, other = results(over_tcp(daemon, steps))
    assert [p["name"] for p in ok(plugins)["plugins"]] == ["demo"]
    [resource] = listed["resources"]
    assert (resource["uri"], resource["mimeType"]) == (uri, "application/json")
    [template] = templates["resourceTemplates"]
    assert template["uriTemplate"] == "volant://plugins/{name}/manifest"
    [content] = read["contents"]
    assert (content["uri"], content["mimeType"]) == (uri, "application/json")
    status, _ctype, manifest = raw(daemon, "GET", "/api/v1/plugins/demo/manifest")
    assert status == 200
    assert json.loads(content["text"]) == manifest
    assert ghost["error"]["code"] == -32002
    assert "ghost" in ghost["error"]["message"]
    assert other["error"]["code"] == -32002


BAD_CALLS: list[tuple[dict[str, Any], str, str]] = [
    (call("create_vm", name="Bad_Name", plugin="demo"), "InvalidArgument", "name"),
    (call("create_vm", name="ok", plugin="demo", cpu_cores="2"), "InvalidArgument", "cpu_cores"),
    (call("create_vm", name="ok", plugin="demo", colour="red"), "InvalidArgument", "colour"),
    (call("create_vm", plugin="demo"), "InvalidArgument", "name"),
    (call("create_vm", name="ok", plugin="demo", memory_mb=10**9), "InvalidArgument", "memory"),
    (call("create_vm", name="ok", plugin="nosuch"), "NotFound", "nosuch"),
    (call("start_vm", name="ghost"), "NotFound", "ghost"),
    (call("list_vms", limit=0), "InvalidArgument", "limit"),
]


def test_bad_arguments_are_tool_errors(daemon: Daemon) -> None:
    steps = [step for step, _code, _text in BAD_CALLS]
    steps += [call("create_vm", name="idle", plugin="demo"), call("start_vm", name="idle")]
    steps += [call("delete_vm", name="idle"), call("no_such_tool")]
    answers = results(over_tcp(daemon, steps))
    for (step, code, text), result in zip(BAD_CALLS, answers, strict=False):
        error = tool_error(result)
        assert error["code"] == code, (step, error)
        assert text in error["message"], (step, error)
    created, started_again, deleted, unknown = answers[len(BAD_CALLS) :]
    assert ok(created)["status"] == "running"
    error = tool_error(started_again)
    assert error["code"] == "InvalidState"
    assert ok(deleted) == {"deleted": "idle"}
    # An unknown tool is a protocol error, as the specification says; still no HTTP failure.
    assert unknown["error"]["code"] == -32602
    assert daemon.call(lambda c: c.list_vms()) == []
    assert daemon.call(lambda c: c.system_status())["ip_pool_leased"] == 0


def curl(daemon: Daemon, *argv: str) -> tuple[int, str, str]:
    """(status, content type, body) of a request from inside the daemon's namespace."""
    proc = daemon.in_ns(
        "curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code} %{content_type}",
        *argv,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    body, _, tail = proc.stdout.rpartition("\n")
    status, _, ctype = tail.partition(" ")
    return int(status), ctype, body


INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "curl", "version": "0"},
        },
    }
)
JSON_POST = ["-X", "POST", "-H", "Content-Type: application/json"]
ACCEPT = ["-H", "Accept: application/json, text/event-stream"]


def test_api_key_is_required_before_any_mcp_processing(daemon: Daemon) -> None:
    for headers in ([], ["-H", "X-Volant-API-Key: wrong"]):
        status, ctype, body = curl(daemon, *JSON_POST, *ACCEPT, *headers, "-d", INIT, URL)
        assert (status, ctype.split(";")[0]) == (401, "application/problem+json")
        assert json.loads(body)["code"] == "Unauthenticated"
    status, _ctype, body = curl(daemon, *JSON_POST, *ACCEPT, "-d", INIT, f"{URL}?api_key={KEY}")
    assert status == 200
    assert json.loads(body)["result"]["serverInfo"]["name"] == "volant"
    report = over_tcp(daemon, [{"op": "list_tools"}], key="wrong")
    assert "failure" in report
    assert "initialize" not in report


def test_what_the_transport_refuses(daemon: Daemon) -> None:
    key = ["-H", f"X-Volant-API-Key: {KEY}"]
    status, _ctype, body = curl(daemon, *key, "-H", "Accept: text/event-stream", URL)
    assert status == 405  # stateless: no server-initiated stream to open
    assert json.loads(body)["error"]["code"] == -32600
    status, _ctype, _body = curl(daemon, *key, "-X", "DELETE", URL)
    assert status == 405  # no session to end
    origin = ["-H", "Origin: http://evil.example"]
    status, _ctype, body = curl(daemon, *key, *origin, *JSON_POST, *ACCEPT, "-d", INIT, URL)
    assert (status, json.loads(body)["code"]) == (403, "PermissionDenied")
    status, _ctype, body = curl(daemon, *key, *JSON_POST, *ACCEPT, "-d", "{nope", URL)
    assert status == 400
    assert json.loads(body)["error"]["code"] == -32700
    status, _ctype, body = curl(daemon, *key, "-X", "POST", "-d", "x", URL)
    assert (status, body) == (400, "Invalid Content-Type header")


def test_the_openapi_document_declares_the_endpoint(daemon: Daemon) -> None:
    status, _ctype, document = raw(daemon, "GET", "/api/v1/openapi.json")
    assert status == 200
    path = document["paths"]["/api/v1/mcp"]
    assert set(path) == {"post", "get", "delete"}
    media = set(path["post"]["responses"]["default"]["content"])
    assert media == {"application/json", "text/event-stream", "application/octet-stream"}
    assert "401" in path["post"]["responses"]


def test_unix_socket_callers_are_judged_like_rest(daemon: Daemon) -> None:
    """No key on the unix socket; changes need authorisation (here: root, or polkit's rules)."""
    steps = [call("create_vm", name="sock1", plugin="demo"), call("list_vms")]
    created, listed = results(over_unix(daemon.api, steps))
    assert ok(created)["name"] == "sock1"
    assert ok(listed)["total"] == 1
    # The socket is root's (and group volant's): nobody cannot even connect...
    refused = as_nobody(daemon, [call("list_vms")], modern=False)
    assert "Permission denied" in refused["detail"]
    # ...and when its mode lets them in, polkit's decision still stands between them and a change.
    socket = Path(daemon.api.removeprefix("unix:"))
    socket.chmod(0o666)
    for modern in (False, True):
        steps = [call("delete_vm", name="sock1"), call("get_vm", name="sock1")]
        denied, read = results(as_nobody(daemon, steps, modern=modern))
        assert tool_error(denied)["code"] == "PermissionDenied"
        assert ok(read)["name"] == "sock1"
    [deleted] = results(over_unix(daemon.api, [call("delete_vm", name="sock1")]))
    assert ok(deleted) == {"deleted": "sock1"}


def test_a_tool_call_is_cut_at_the_request_timeout(tmp_path: Path) -> None:
    """api.request_timeout bounds a tool call as it bounds a REST request, as a tool error."""
    settings = {
        "api.key": KEY,
        "api.request_timeout": 1.0,
        "runtime.start_paused": True,  # a paused guest ignores the power button...
        "runtime.stop_timeout": 60.0,  # ...so a graceful stop would wait this long
    }
    with running_daemon(tmp_path, settings) as daemon:
        steps = [call("create_vm", name="slow", plugin="demo"), call("stop_vm", name="slow")]
        started = time.monotonic()
        created, stopped = results(over_tcp(daemon, steps))
        assert time.monotonic() - started < 30
        assert ok(created)["status"] == "running"
        error = tool_error(stopped)
        assert error["code"] == "Unavailable"
        assert "stop_vm took longer than 1s" in error["message"]
        assert "api.request_timeout" in error["hint"]
        assert "Traceback" not in daemon.log_text()
