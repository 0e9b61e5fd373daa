"""The REST surface over a real volantd: list filters and paging, system status and info,
metrics, the OpenAPI document, and access control over TCP (API key, allowed networks, body
limit). Guests start paused: nothing here needs them to boot."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import Daemon, build_guest, netns, raw, start_daemon, stop_daemon
from tests.integration.mcp_client import call, over_unix, results
from volant.network import ISOLATED_GROUP, tap_name

pytestmark = pytest.mark.integration

KEY = "s3cret-key"
TCP = "http://127.0.0.1:7777"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    with netns() as ns:
        settings = {"runtime.start_paused": True, "api.key": KEY, "api.max_body_kb": 4}
        d = start_daemon(
            ns, tmp_path_factory.mktemp("volantd"), settings, plugins=("demo", "other")
        )
        try:
            for name in ("web-1", "web-2", "db-1"):
                plugin = "other" if name == "db-1" else "demo"
                d.call(lambda c, n=name, p=plugin: c.create_vm({"name": n, "plugin": p}))
            d.call(lambda c: c.stop_vm("web-2"))
            yield d
        finally:
            stop_daemon(d)


def curl(daemon: Daemon, path: str, *args: str) -> tuple[int, str]:
    """(status, body) of a TCP request from inside the daemon's namespace."""
    proc = daemon.in_ns("curl", "-sS", "-w", "\n%{http_code}", *args, f"{TCP}{path}")
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


def names(daemon: Daemon, query: str) -> tuple[list[str], int]:
    status, _ctype, body = raw(daemon, "GET", f"/api/v1/vms?{query}")
    assert status == 200, body
    return [vm["name"] for vm in body["vms"]], body["total"]


def test_list_filters_sort_and_pages(daemon: Daemon) -> None:
    assert names(daemon, "") == (["db-1", "web-1", "web-2"], 3)
    assert names(daemon, "prefix=web") == (["web-1", "web-2"], 2)
    assert names(daemon, "plugin=other") == (["db-1"], 1)
    assert names(daemon, "status=stopped") == (["web-2"], 1)
    assert names(daemon, "sort=-name&limit=2") == (["web-2", "web-1"], 3)
    assert names(daemon, "sort=name&limit=2&offset=2") == (["db-1", "web-1", "web-2"][2:], 3)
    assert names(daemon, "prefix=zz") == ([], 0)
    _status, _ctype, page = raw(daemon, "GET", "/api/v1/vms?limit=1&offset=1")
    assert (page["limit"], page["offset"]) == (1, 1)


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=sleeping", "status"), ("sort=colour", "sort"), ("limit=0", "limit"),
     ("offset=-1", "offset"), ("prefix=Web", "prefix"), ("colour=red", "colour"),
     ("limit=1&limit=2", "")],
)  # fmt: skip
def test_bad_list_queries_are_400(daemon: Daemon, query: str, field: str) -> None:
    status, ctype, body = raw(daemon, "GET", f"/api/v1/vms?{query}")
    assert (status, ctype, body["code"]) == (400, "application/problem+json", "InvalidArgument")
    assert field in body["detail"]


def test_status_info_and_metrics(daemon: Daemon) -> None:
    status = daemon.call(lambda c: c.system_status())
    assert status["vms_total"] == 3
    assert status["vms_by_status"]["stopped"] == 1
    assert status["ip_pool_leased"] == 3
    assert status["ip_pool_subnet"] == "192.168.127.0/24"
    host = status["host"]
    assert host["cpus"] >= 1
    assert host["memory_total_bytes"] > host["memory_available_bytes"] > 0
    assert len(host["load_average"]) == 3
    info = daemon.call(lambda c: c.request("GET", "/api/v1/system/info"))
    assert info["api_key_required"] is True
    assert info["hypervisor"] == "qemu"
    raw(daemon, "GET", "/api/v1/vms/nosuchvm")
    code, text = curl(daemon, "/metrics", "-H", f"X-Volant-API-Key: {KEY}")
    assert code == 200
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples['volant_vms{status="stopped"}']) == 1
    assert float(samples["volant_vm_create_seconds_count"]) == 3
    assert float(samples['volant_api_errors_total{api="rest",code="NotFound"}']) >= 1
    assert float(samples['volant_ip_pool_addresses{state="leased"}']) == 3


def test_openapi_document_describes_every_route(daemon: Daemon) -> None:
    _status, _ctype, doc = raw(daemon, "GET", "/api/v1/openapi.json")
    assert doc["openapi"] == "3.1.0"
    paths: dict[str, Any] = doc["paths"]
    for route in ("/api/v1/vms", "/api/v1/vms/{name}", "/api/v1/system/status", "/metrics"):
        assert route in paths
    listing = {p["name"] for p in paths["/api/v1/vms"]["get"]["parameters"]}
    assert listing == {"status", "plugin", "prefix", "sort", "limit", "offset"}
    create = doc["components"]["schemas"]["CreateVMRequest"]["properties"]
    assert create["memory_mb"]["anyOf"][0]["minimum"] == 64  # this host's vm.min_memory_mb


def test_tcp_needs_the_key_and_healthz_does_not(daemon: Daemon) -> None:
    assert curl(daemon, "/healthz")[0] == 200
    status, body = curl(daemon, "/api/v1/vms")
    assert status == 401
    assert json.loads(body)["code"] == "Unauthenticated"
    assert curl(daemon, "/api/v1/vms", "-H", "X-Volant-API-Key: wrong")[0] == 401
    assert curl(daemon, "/api/v1/vms", "-H", f"X-Volant-API-Key: {KEY}")[0] == 200
    assert curl(daemon, f"/api/v1/vms?api_key={KEY}&prefix=web")[0] == 200
    # Files are management both ways: the key is needed to read one too.
    assert curl(daemon, "/api/v1/vms/web/files?path=/etc/passwd")[0] == 401
    assert curl(daemon, "/api/v1/vms/web/files?path=/etc/passwd", "-X", "PUT")[0] == 401
    status, body = curl(daemon, "/api/v1/vms/nope/files?path=/a", "-H", f"X-Volant-API-Key: {KEY}")
    assert (status, json.loads(body)["code"]) == (404, "NotFound")
    # The unix socket is guarded by its mode and polkit, not by the key.
    assert raw(daemon, "GET", "/api/v1/vms")[0] == 200


def test_body_limit_is_413_and_creates_nothing(daemon: Daemon) -> None:
    body = json.dumps({"name": "big", "plugin": "demo", "kernel_args": "x" * 8000})
    status, ctype, problem = raw(daemon, "POST", "/api/v1/vms", body.encode())
    assert (status, ctype, problem["code"]) == (413, "application/problem+json", "TooLarge")
    assert "big" not in names(daemon, "")[0]


def isolation_of(daemon: Daemon, vm: str) -> tuple[bool, str]:
    """(bridge port isolated, interface group) of the VM's tap, as the kernel has them."""
    proc = daemon.in_ns("ip", "-j", "-d", "link", "show", "dev", tap_name(vm))
    (info,) = json.loads(proc.stdout)
    return bool(info["linkinfo"]["info_slave_data"]["isolated"]), str(info.get("group"))


def test_isolated_vms_and_plugins(daemon: Daemon) -> None:
    """isolated from the create body or the plugin's network.isolated: recorded, shown, and
    put on the VM's tap; a value that is not a JSON boolean is refused."""
    status, _ctype, vm = raw(
        daemon, "POST", "/api/v1/vms", {"name": "iso-1", "plugin": "demo", "isolated": True}
    )
    assert (status, vm["isolated"]) == (201, True), vm
    assert raw(daemon, "GET", "/api/v1/vms/web-1")[2]["isolated"] is False
    daemon.install_plugin("lonely", network={"mode": "bridged", "isolated": True})
    status, _ctype, vm = raw(daemon, "POST", "/api/v1/vms", {"name": "iso-2", "plugin": "lonely"})
    assert (status, vm["isolated"]) == (201, True), vm
    try:
        assert raw(daemon, "GET", "/api/v1/vms/iso-2")[2]["isolated"] is True
        shown = daemon.volar("vms", "get", "iso-1").stdout.splitlines()
        assert "isolated:       yes" in shown, shown
        for name in ("iso-1", "iso-2"):
            assert isolation_of(daemon, name) == (True, str(ISOLATED_GROUP))
        assert isolation_of(daemon, "web-1") == (False, "default")
        for bad in ("yes", 1, None):
            body = {"name": "iso-3", "plugin": "demo", "isolated": bad}
            status, _ctype, problem = raw(daemon, "POST", "/api/v1/vms", body)
            assert (status, problem["code"]) == (400, "InvalidArgument"), problem
            assert "isolated" in problem["detail"]
    finally:
        for name in ("iso-1", "iso-2"):
            raw(daemon, "DELETE", f"/api/v1/vms/{name}")
        raw(daemon, "DELETE", "/api/v1/plugins/lonely")


def test_the_agent_secret_is_in_no_reply_event_or_log(daemon: Daemon) -> None:
    """Every VM has an agent secret on its config disk (0600), and no REST or MCP reply, event,
    `volar` output, log line or the hypervisor's argv carries it."""
    vm = raw(daemon, "GET", "/api/v1/vms/web-1")[2]
    secret = daemon.agent_secret("web-1")
    assert len(secret) >= 43  # 32 random bytes, base64url
    disk = daemon.tmp / "run" / "vms" / "web-1" / "config.img"
    assert stat.S_IMODE(disk.stat().st_mode) == 0o600
    assert secret not in vm["kernel_cmdline"]
    assert secret.encode() not in Path(f"/proc/{vm['pid']}/cmdline").read_bytes()
    seen = [
        json.dumps(raw(daemon, "GET", path)[2])
        for path in ("/api/v1/vms/web-1", "/api/v1/vms", "/api/v1/events?limit=10000",
                     "/api/v1/system/status")
    ]  # fmt: skip
    seen += [daemon.volar(*argv).stdout for argv in
             (("vms", "get", "web-1"), ("vms", "get", "web-1", "--json"), ("vms", "list"),
              ("events", "--no-follow", "--json"))]  # fmt: skip
    steps = [call("get_vm", name="web-1"), call("list_vms")]
    seen += [json.dumps(result) for result in results(over_unix(daemon.api, steps))]
    seen.append(daemon.log_text())
    assert all(secret not in text for text in seen)
    # Each VM has its own.
    assert daemon.agent_secret("web-2") != secret


def test_allowed_networks(tmp_path_factory: pytest.TempPathFactory) -> None:
    with netns() as ns:
        settings = {"api.allow_cidr": "10.0.0.0/8, fd00::/8"}
        d = start_daemon(ns, tmp_path_factory.mktemp("cidr"), settings, plugins=())
        try:
            status, body = curl(d, "/api/v1/vms")
            assert status == 403
            assert "api.allow_cidr" in json.loads(body)["detail"]
            assert curl(d, "/healthz")[0] == 200
        finally:
            stop_daemon(d)
