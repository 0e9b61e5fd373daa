"""Plugins end to end on real QEMU guests running the agent image: volantd (child-process
supervisor) in a private netns, signatures required, the signed hello example.

Covers: the signed example installs, its workload answers through the action proxies and MCP,
and its console has the shell runtime.console_shell asks for; a tampered or unsigned manifest is
refused; the health check gates `running` and a workload that never gets healthy ends in `error`
with the reason; the agent restarts a crashed workload; a manifest too large for the kernel
command line travels on the config disk.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from tests.integration.daemon import (
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    netns,
    raw,
    running_daemon,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.mcp_client import call, ok, over_unix, results
from tests.integration.test_console import until_the_shell_answers
from volant.client import VolantClient
from volant.plugins.signing import generate_keypair, sign

pytestmark = pytest.mark.integration

HELLO = ROOT / "examples" / "plugins" / "hello"
BOOT_TIMEOUT = 25.0  # runtime.boot_timeout: bounds how long the never-healthy VM takes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(trusted keys dir with the example key and a test key, the test key's private half)."""
    trusted = tmp_path_factory.mktemp("trusted")
    shutil.copy(ROOT / "examples" / "keys" / "volant-examples.pub", trusted)
    private, public = generate_keypair(tmp_path_factory.mktemp("author"), "tests")
    shutil.copy(public, trusted)
    return trusted, private


@pytest.fixture(scope="module")
def daemon(keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    write_plugin_cpio(HELLO)  # make guest builds it; a fresh checkout may not have yet
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "runtime.boot_timeout": BOOT_TIMEOUT,
        "plugins.require_signature": True,
        "plugins.trusted_keys_dir": str(keys[0]),
        "runtime.console_shell": True,
    }
    with running_daemon(tmp_path_factory.mktemp("volantd"), settings, plugins=()) as d:
        yield d


def install(daemon: Daemon, manifest: Path, signature: str | None) -> tuple[int, Any]:
    body = {"manifest": manifest.read_text(), "signature": signature, "origin": manifest.as_uri()}
    status, _, reply = raw(daemon, "POST", "/api/v1/plugins", body)
    return status, reply


def variant(directory: Path, key: Path, name: str, **changes: Any) -> tuple[Path, str]:
    """The hello manifest renamed and changed, its archive beside it, signed by the test key."""
    doc = json.loads((HELLO / "manifest.json").read_text())
    doc.update(name=name, **changes)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(HELLO / "hello.cpio", directory / "hello.cpio")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path, sign(path.read_bytes(), key)


def create(daemon: Daemon, name: str, plugin: str) -> dict[str, Any]:
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": name, "plugin": plugin})
    assert status == 201, vm
    return dict(vm)


def action(daemon: Daemon, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, reply = raw(daemon, "POST", path, body)
    return status, reply


def test_unsigned_and_tampered_manifests_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    manifest = HELLO / "manifest.json"
    status, problem = install(daemon, manifest, None)
    assert (status, problem["code"]) == (403, "SignatureInvalid")
    assert "not signed" in problem["detail"]

    tampered = tmp_path / "manifest.json"
    tampered.write_text(manifest.read_text().replace('"0.1.0"', '"0.1.1"'))
    shutil.copy(HELLO / "hello.cpio", tmp_path / "hello.cpio")
    signature = (HELLO / "manifest.json.sig").read_text()
    status, problem = install(daemon, tampered, signature)
    assert (status, problem["code"]) == (403, "SignatureInvalid")
    assert "does not match" in problem["detail"]
    assert daemon.call(lambda c: c.request("GET", "/api/v1/plugins"))["total"] == 0


def follow_until(daemon: Daemon, vm: str, text: str) -> str:
    """Follow the VM's log (SSE, with keepalives) until a line holds text; that line."""

    async def follow(client: VolantClient) -> str:
        query = {"follow": "true", "limit": "50"}
        async with asyncio.timeout(60):
            async for event in client.events(f"/api/v1/vms/{vm}/logs", query=query):
                line = str(json.loads(event.data)["text"])
                if text in line:
                    return line
        raise AssertionError(f"the log stream of {vm} ended before {text!r}")

    return str(daemon.call(follow))


def test_signed_hello_boots_and_answers_through_the_proxies(daemon: Daemon) -> None:
    status, plugin = install(
        daemon, HELLO / "manifest.json", (HELLO / "manifest.json.sig").read_text()
    )
    assert status == 201, plugin
    assert (plugin["name"], plugin["signer"], plugin["enabled"]) == (
        "hello",
        "volant-examples",
        True,
    )

    vm = create(daemon, "hello1", "hello")
    assert vm["status"] == "starting"  # the health check gates running
    assert (vm["cpu_cores"], vm["memory_mb"]) == (1, 256)  # from the manifest's resources
    assert "volant.manifest=" in vm["kernel_cmdline"]
    assert "volant.shell=1" in vm["kernel_cmdline"]  # runtime.console_shell
    wait_status(daemon, "hello1", "running", timeout=90)
    # The agent guest's console shell answers, beside the agent's own output.
    daemon.call(lambda c: until_the_shell_answers(c, "hello1"))

    status, greet = action(daemon, "/api/v1/vms/hello1/actions/greet")
    assert status == 200, greet
    assert greet["greeting"] == "hello from volant"
    status, echo = action(daemon, "/api/v1/plugins/hello/actions/echo", {"ping": 1})
    assert (status, json.loads(echo["echo"])) == (200, {"ping": 1})
    status, problem = action(daemon, "/api/v1/vms/hello1/actions/nope")
    assert (status, problem["code"]) == (404, "NotFound")
    assert "greet" in problem["detail"]

    lines = daemon.call(lambda c: c.request("GET", "/api/v1/vms/hello1/logs"))["lines"]
    assert any("GET /greet" in line["text"] for line in lines), lines
    # The same through MCP, as an agent asks (root, on the unix socket).
    steps = [
        call("call_action", name="hello1", action="greet"),
        call("call_action", name="hello1", action="echo", input={"ping": 2}),
        call("vm_logs", name="hello1", limit=50),
    ]
    greeted, echoed, logs = map(ok, results(over_unix(daemon.api, steps)))
    assert (greeted["status"], greeted["json"]["greeting"]) == (200, "hello from volant")
    assert (echoed["status"], json.loads(echoed["json"]["echo"])) == (200, {"ping": 2})
    assert any("POST /echo" in line["text"] for line in logs["lines"]), logs
    assert "/echo" in follow_until(daemon, "hello1", "/echo")
    status, _, openapi = raw(daemon, "GET", "/api/v1/vms/hello1/openapi")
    assert status == 200
    assert set(openapi["paths"]) == {"/greet", "/echo", "/health"}

    # The agent restarts a crashed workload (restart: always); the proxy answers again.
    first_pid = greet["pid"]
    ip = vm["ip_address"]
    unauthorized = daemon.in_ns("curl", "-sS", "-X", "POST", f"http://{ip}:8080/v1/workload/kill")
    assert json.loads(unauthorized.stdout) == {"error": "unauthorized"}
    killed = daemon.agent_curl("hello1", ip, "/v1/workload/kill", "-X", "POST")
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout)["signalled"] == first_pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, greet = action(daemon, "/api/v1/vms/hello1/actions/greet")
        if status == 200 and greet["pid"] != first_pid:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the workload was not restarted: {status} {greet}")

    status, problem = raw(daemon, "DELETE", "/api/v1/plugins/hello")[::2]
    assert (status, problem["code"]) == (409, "Conflict")


def test_never_healthy_workload_ends_in_error(
    daemon: Daemon, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    doc = json.loads((HELLO / "manifest.json").read_text())
    workload = {**doc["workload"], "health_check": {"path": "/nope", "start_period_ms": 1000}}
    manifest, signature = variant(tmp_path, keys[1], "sick", workload=workload)
    status, plugin = install(daemon, manifest, signature)
    assert (status, plugin["signer"]) == (201, "tests")

    assert create(daemon, "sick1", "sick")["status"] == "starting"
    vm = wait_status(daemon, "sick1", "error", timeout=BOOT_TIMEOUT + 30)
    assert "healthy" in vm["status_reason"], vm
    assert vm["pid"] is None
    events = daemon.call(lambda c: c.request("GET", "/api/v1/events?vm=sick1"))["events"]
    assert events[-1]["type"] == "VM_ERROR"
    assert events[-1]["payload"]["reason"] == vm["status_reason"]


def test_large_manifest_travels_on_the_config_disk(
    daemon: Daemon, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    # Random label values do not compress: the encoded manifest passes 2047 characters.
    labels = {f"pad{i}": secrets.token_hex(100) for i in range(16)}
    manifest, signature = variant(tmp_path, keys[1], "big", labels=labels)
    assert install(daemon, manifest, signature)[0] == 201

    vm = create(daemon, "big1", "big")
    assert "volant.manifest=" not in vm["kernel_cmdline"]
    assert len(vm["kernel_cmdline"]) < 2048
    wait_status(daemon, "big1", "running", timeout=90)
    status, greet = action(daemon, "/api/v1/vms/big1/actions/greet")
    assert (status, greet["greeting"]) == (200, "hello from volant")


def test_health_gate_survives_a_daemon_restart(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A VM still waiting for its workload's health when volantd stops is adopted by the next
    volantd, which waits again and then marks it running."""
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "plugins.trusted_keys_dir": str(keys[0]),
    }
    with netns() as ns:
        first = start_daemon(ns, tmp_path, settings, plugins=())
        try:
            manifest = HELLO / "manifest.json"
            assert install(first, manifest, (HELLO / "manifest.json.sig").read_text())[0] == 201
            assert create(first, "phoenix", "hello")["status"] == "starting"
        finally:
            stop_daemon(first, delete_vms=False)
        second = start_daemon(ns, tmp_path, settings, plugins=())
        try:
            # Once when the first daemon launched it, once when the second adopted it.
            assert second.log_text().count("waiting for its workload to be healthy") == 2
            wait_status(second, "phoenix", "running", timeout=90)
        finally:
            stop_daemon(second)
