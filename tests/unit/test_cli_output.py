"""What volar prints for workload logs, actions, OpenAPI documents and plugins.

The daemon's side of these routes needs a guest agent (system tests); here an aiohttp app on a
unix socket, in a thread of its own, stands in for volantd so that volar's output is pinned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.unit.run_volar import volar
from tests.unit.volantd_standin import serving

pytestmark = pytest.mark.unit

LINES = [
    {"seq": 1, "ts": 1700000000.25, "stream": "stdout", "line": "listening on :9000"},
    {"seq": 2, "ts": 1700000001.5, "stream": "stderr", "line": "GET /greet"},
]
PLUGIN = {
    "id": 1,
    "name": "hello",
    "version": "0.1.0",
    "runtime": "hello",
    "digest": "sha256:" + "0123456789abcdef" * 4,
    "enabled": True,
    "signer": None,
    "source": "file:///srv/hello/manifest.json",
    "created_at": "2024-01-01T00:00:00+00:00",
    "updated_at": "2024-01-01T00:00:00+00:00",
}
OPENAPI_YAML = "openapi: 3.0.0\ninfo:\n  title: hello\n"


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.json_response(
        {"code": code, "detail": detail, "status": status},
        status=status,
        content_type="application/problem+json",
    )


async def _logs(request: web.Request) -> web.StreamResponse:
    if request.query.get("follow") != "true":
        return web.json_response({"lines": LINES})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for line in LINES:
        await resp.write(f": keepalive\n\ndata: {json.dumps(line)}\n\n".encode())
    await resp.write_eof()
    return resp


async def _action(request: web.Request) -> web.Response:
    body = await request.read()
    if request.match_info["action"] == "fail":
        return web.Response(status=503, text="not ready", content_type="text/plain")
    return web.Response(body=b"got " + body, content_type="text/plain")


async def _openapi(request: web.Request) -> web.Response:
    if request.match_info["name"] == "json":
        return web.json_response({"openapi": "3.0.0"})
    return web.Response(text=OPENAPI_YAML, content_type="application/yaml")


async def _vm(request: web.Request) -> web.Response:
    return web.json_response(
        {"name": request.match_info["name"], "status": "error", "status_reason": "unhealthy"}
    )


async def _plugins(_: web.Request) -> web.Response:
    return web.json_response({"plugins": [PLUGIN], "total": 1})


async def _plugin(request: web.Request) -> web.Response:
    if request.match_info["name"] != "hello":
        return _problem(404, "NotFound", "no plugin named 'x'")
    return web.json_response(PLUGIN | {"manifest": {"name": "hello", "labels": {"k": "v"}}})


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/v1/vms/{name}", _vm)
    app.router.add_get("/api/v1/vms/{name}/logs", _logs)
    app.router.add_post("/api/v1/vms/{name}/actions/{action}", _action)
    app.router.add_get("/api/v1/vms/{name}/openapi", _openapi)
    app.router.add_get("/api/v1/plugins", _plugins)
    app.router.add_get("/api/v1/plugins/{name}", _plugin)
    return app


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(_app(), tmp_path_factory.mktemp("api") / "api.sock") as base:
        yield base


def _fields(out: str) -> list[list[str]]:
    return [line.split(" ", 3)[2:] for line in out.splitlines()]


def test_logs(api: str) -> None:
    code, out, _ = volar("--api", api, "vms", "logs", "web")
    assert code == 0
    assert _fields(out) == [["stdout", "listening on :9000"], ["stderr", "GET /greet"]]
    code, out, _ = volar("--api", api, "vms", "logs", "web", "--json")
    assert json.loads(out) == LINES


def test_logs_follow(api: str) -> None:
    code, out, _ = volar("--api", api, "vms", "logs", "web", "-f")
    assert code == 0
    assert _fields(out) == [["stdout", "listening on :9000"], ["stderr", "GET /greet"]]
    code, out, _ = volar("--api", api, "vms", "logs", "web", "-f", "--json")
    assert [json.loads(line) for line in out.splitlines()] == LINES


def test_action_prints_the_answer_and_fails_on_non_2xx(api: str, tmp_path: Path) -> None:
    assert volar("--api", api, "vms", "action", "web", "echo", "-d", '{"a": 1}')[:2] == (
        0,
        'got {"a": 1}\n',
    )
    body = tmp_path / "body.json"
    body.write_text("[1, 2]")
    assert (
        volar("--api", api, "vms", "action", "web", "echo", "--data", f"@{body}")[1]
        == "got [1, 2]\n"
    )
    code, out, err = volar("--api", api, "vms", "action", "web", "fail")
    assert (code, out) == (1, "not ready\n")
    assert err.splitlines()[0] == "volar: error: action 'fail' on VM 'web' answered HTTP 503"
    assert err.splitlines()[1].startswith("hint: `volar vms logs web`")


def test_openapi_yaml_as_is_json_pretty(api: str) -> None:
    assert volar("--api", api, "vms", "openapi", "yaml")[:2] == (0, OPENAPI_YAML)
    assert volar("--api", api, "vms", "openapi", "json")[1] == '{\n  "openapi": "3.0.0"\n}\n'


def test_vm_get_shows_why_it_failed(api: str) -> None:
    code, out, _ = volar("--api", api, "vms", "get", "web")
    assert code == 0
    assert "status_reason: unhealthy" in out


def test_plugins_list_and_show(api: str) -> None:
    code, out, _ = volar("--api", api, "plugins", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "RUNTIME", "ENABLED", "SIGNER", "DIGEST"]
    assert row.split() == ["hello", "0.1.0", "hello", "yes", "-", "0123456789ab"]
    listed: Any = json.loads(volar("--api", api, "plugins", "list", "--json")[1])
    assert listed == [PLUGIN]
    code, out, _ = volar("--api", api, "plugins", "show", "hello")
    assert code == 0
    assert "source:     file:///srv/hello/manifest.json" in out
    details, manifest = out.split("manifest:\n")
    assert "digest:     sha256:0123" in details
    assert json.loads(manifest) == {"name": "hello", "labels": {"k": "v"}}
    shown = json.loads(volar("--api", api, "plugins", "show", "hello", "--json")[1])
    assert shown["manifest"]["name"] == "hello"
    code, out, err = volar("--api", api, "plugins", "show", "nope")
    assert (code, out, err) == (1, "", "volar: error: no plugin named 'x'\n")
