"""The HTTP and WebSocket passthrough and OpenAPI operations, end to end on a real QEMU guest.

volantd in a private netns (API key set, so TCP callers need it), one VM `web` of a plugin whose
workload is tests/integration/webtest_workload.py: plain answers, an upload, a chunked stream
whose last chunk waits for the client to have the first, and a hand-written WebSocket echo that
stands in for a browser's DevTools socket. Clients: aiohttp on volantd's unix socket (root, so
polkit says yes), curl over TCP inside the namespace, volar, and MCP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from tests.integration.daemon import (
    GUEST_DIR,
    Daemon,
    build_guest,
    raw,
    running_daemon,
    wait_status,
)
from tests.integration.mcp_client import call, ok, over_unix, results, tool_error
from tests.readme import blocks

pytestmark = pytest.mark.integration

WORKLOAD = Path(__file__).with_name("webtest_workload.py")
DOC = Path(__file__).resolve().parents[2] / "docs" / "workloads.md"
KEY = "proxy-test-key"
PROXY = "/api/v1/vms/web/proxy"
# Bridged, and network-less (the agent reached through volantd's relay socket).
EVERY_MODE = pytest.mark.parametrize("vm", ["web", "quiet"])


def install_webtest(daemon: Daemon, directory: Path, vms: dict[str, str]) -> None:
    """Install the webtest plugin (bridged) and `webquiet` (network-less), then create each VM
    of vms (name -> plugin) and wait until it runs."""
    plugin = directory / "webtest"
    plugin.mkdir()
    shutil.copy(WORKLOAD, plugin / "app.py")
    archive = write_plugin_cpio(plugin)
    manifest = {
        "schema_version": 1,
        "name": "webtest",
        "version": "1.0.0",
        "runtime": "webtest",
        "resources": {"cpu_cores": 1, "memory_mb": 256},
        "workload": {
            "type": "http",
            "entrypoint": ["python3", "/opt/volant/plugins/webtest/app.py"],
            "base_url": "http://127.0.0.1:9100",
            "health_check": {"path": "/hello", "timeout_ms": 2000},
        },
        "initramfs": {
            "path": archive.name,
            "checksum": "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest(),
        },
        "network": {"mode": "bridged"},
        "openapi": "/openapi.json",
    }
    # The same workload in a network-less VM: its agent behind volantd's relay socket.
    quiet = manifest | {"name": "webquiet", "network": {"mode": "vsock"}}
    for doc in (manifest, quiet):
        path = plugin / f"{doc['name']}.json"
        path.write_text(json.dumps(doc))
        body = {"manifest": path.read_text(), "origin": path.as_uri()}
        status, _, reply = raw(daemon, "POST", "/api/v1/plugins", body)
        assert status == 201, reply
    for name, plugin_name in vms.items():
        status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": name, "plugin": plugin_name})
        assert status == 201, vm
    for name in vms:
        wait_status(daemon, name, "running", timeout=120)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    build_guest()
    settings = {"runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"), "api.key": KEY}
    # Not under pytest's private tmp: an unprivileged client must reach the unix socket.
    tmp = Path(tempfile.mkdtemp(prefix="volant-proxy-"))
    tmp.chmod(0o755)
    with running_daemon(tmp, settings, plugins=()) as d:
        install_webtest(d, tmp, {"web": "webtest", "quiet": "webquiet"})
        yield d
        assert "broke the OpenAPI document" not in d.log_text()
        assert "Traceback" not in d.log_text()
    shutil.rmtree(tmp, ignore_errors=True)


def session(daemon: Daemon) -> aiohttp.ClientSession:
    connector = aiohttp.UnixConnector(path=daemon.api.removeprefix("unix:"))
    return aiohttp.ClientSession(connector=connector, base_url="http://localhost")


@EVERY_MODE
def test_plain_http_keeps_query_and_headers_but_not_volantds_key(daemon: Daemon, vm: str) -> None:
    proxy = f"/api/v1/vms/{vm}/proxy"

    async def run() -> tuple[Any, Any]:
        async with session(daemon) as s:
            async with s.get(f"{proxy}/hello?x=1&api_key={KEY}", headers={"X-Mine": "y"}) as r:
                assert r.status == 200
                seen = await r.json()
            data = bytes(range(256)) * 8192  # 2 MiB, over volantd's and the agent's body limit
            async with s.post(f"{proxy}/upload", data=data) as r:
                uploaded = await r.json()
            assert uploaded == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            async with s.get(f"{proxy}/nowhere") as r:  # the workload's own 404 passes through
                return seen, (r.status, await r.json())

    seen, missing = asyncio.run(run())
    assert seen["query"] == {"x": "1"}
    assert seen["headers"]["x-mine"] == "y"
    assert "x-volant-agent-secret" not in seen["headers"]
    assert "x-volant-api-key" not in seen["headers"]
    assert missing == (404, {"error": "webtest: no such path"})


@EVERY_MODE
def test_a_streamed_answer_arrives_as_it_is_produced(daemon: Daemon, vm: str) -> None:
    proxy = f"/api/v1/vms/{vm}/proxy"

    async def run() -> tuple[bytes, bytes]:
        async with session(daemon) as s, s.get(f"{proxy}/stream") as r:
            assert r.status == 200
            first = await asyncio.wait_for(r.content.readline(), 60)
            # Only now is the last chunk produced: the first came before it existed.
            async with s.post(f"{proxy}/release") as released:
                assert released.status == 200
            return first, await asyncio.wait_for(r.content.read(), 60)

    assert asyncio.run(run()) == (b"first\n", b"last\n")


@EVERY_MODE
def test_a_websocket_echo_through_volantd_and_the_agent(daemon: Daemon, vm: str) -> None:
    proxy = f"/api/v1/vms/{vm}/proxy"

    async def run() -> list[Any]:
        async with session(daemon) as s, s.ws_connect(f"{proxy}/ws") as ws:
            await ws.send_str('{"id": 1, "method": "Page.navigate"}')
            text = await asyncio.wait_for(ws.receive_str(), 30)
            await ws.send_bytes(b"\x00\x01binary")
            data = await asyncio.wait_for(ws.receive_bytes(), 30)
            await ws.close()
            return [text, data, ws.close_code]

    assert asyncio.run(run()) == ['{"id": 1, "method": "Page.navigate"}', b"\x00\x01binary", 1000]


def test_over_tcp_the_passthrough_needs_the_api_key(daemon: Daemon, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:7777{PROXY}/hello"
    refused = daemon.in_ns("curl", "-sS", "-w", "\n%{http_code}", url)
    body, _, code = refused.stdout.rpartition("\n")
    assert (code, json.loads(body)["code"]) == ("401", "Unauthenticated")
    # docs/workloads.md's passthrough block, with the key.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x00" * 2_000_000)  # over 1 MiB: curl sends Expect: 100-continue
    outputs = []
    for line in blocks("passthrough", DOC.read_text()):
        proc = subprocess.run(
            ["ip", "netns", "exec", daemon.ns, "sh", "-c", f"curl -sS --fail-with-body {line[5:]}"],
            env={"PATH": os.environ["PATH"], "VOLANT_API_KEY": KEY},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        outputs.append(proc.stdout)
    hello, uploaded, ticks = outputs
    assert json.loads(hello)["query"] == {"x": "1"}
    assert json.loads(uploaded)["size"] == 2_000_000
    assert ticks == "tick 1\ntick 2\ntick 3\n"


def test_volar_lists_and_calls_the_workloads_operations(daemon: Daemon, tmp_path: Path) -> None:
    # docs/workloads.md's operations block, in order.
    commands = [shlex.split(line) for line in blocks("operations", DOC.read_text())]
    assert [argv[:3] for argv in commands] == [
        ["volar", "vms", "operations"], ["volar", "vms", "call"], ["volar", "vms", "call"],
    ]  # fmt: skip
    listed, called, failed = (daemon.volar(*argv[1:]) for argv in commands)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["OPERATION", "METHOD", "PATH", "SUMMARY"]
    assert lines[1].split()[:3] == ["getHello", "GET", "/hello"]
    assert lines[3].split()[:3] == ["GET:/status", "GET", "/status"]  # no operationId

    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"id": "3", "query": {"q": ["1"]}, "body": {"a": 1}}
    assert called.stdout.startswith("{\n  ")  # pretty

    assert failed.returncode == 1
    assert json.loads(failed.stdout) == {"code": "418"}
    assert "answered HTTP 418" in failed.stderr

    body = tmp_path / "item.json"
    body.write_text('{"from": "a file"}')
    from_file = daemon.volar(
        "vms", "call", "web", "putItem", "--param", "id=4", "--body", f"@{body}"
    )
    assert json.loads(from_file.stdout)["body"] == {"from": "a file"}

    unknown = daemon.volar("vms", "call", "web", "putItem")
    assert unknown.returncode != 0
    assert "path parameter(s) id" in unknown.stderr


def test_mcp_lists_and_calls_operations(daemon: Daemon) -> None:
    steps = [
        call("list_operations", name="web"),
        call("call_operation", name="web", operation="putItem", params={"id": "7"}, input=[1]),
    ]
    listed, answered, missing = results(
        over_unix(daemon.api, [*steps, call("call_operation", name="web", operation="nope")])
    )
    listed, answered = ok(listed), ok(answered)
    assert tool_error(missing)["code"] == "NotFound"
    assert [op["key"] for op in listed["operations"]] == ["getHello", "putItem", "GET:/status"]
    assert (answered["status"], answered["json"]["body"]) == (201, [1])
    assert answered["truncated"] is False


def test_on_the_unix_socket_the_passthrough_needs_manage_vms(daemon: Daemon) -> None:
    """A caller polkit does not allow (here: nobody, with no polkit daemon) is refused the
    passthrough and calls, while listing operations is a read."""
    sock = Path(daemon.api.removeprefix("unix:"))
    mode = sock.stat().st_mode
    sock.chmod(0o666)  # let nobody connect: polkit, not the file mode, is what is tested
    try:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        curl = [*nobody, "curl", "-sS", "--unix-socket", str(sock), "-w", "\n%{http_code}"]
        answers = {}
        for method, path in (
            ("GET", f"{PROXY}/hello"),
            ("POST", "/api/v1/vms/web/operations/getHello"),
            ("GET", "/api/v1/vms/web/operations"),
        ):
            argv = [*curl, "-X", method, "-H", "Content-Type: application/json"]
            argv += ["--data", "{}"] if method == "POST" else []
            proc = subprocess.run(
                [*argv, f"http://localhost{path}"], capture_output=True, text=True, check=False
            )
            body, _, code = proc.stdout.rpartition("\n")
            assert body, proc.stderr
            answers[path] = (code, json.loads(body).get("code"))
    finally:
        sock.chmod(mode)
    assert answers == {
        f"{PROXY}/hello": ("403", "PermissionDenied"),
        "/api/v1/vms/web/operations/getHello": ("403", "PermissionDenied"),
        "/api/v1/vms/web/operations": ("200", None),
    }
