"""Guests cannot reach each other's agents, nor volantd's API, and isolated guests no other guest
at all: shown from INSIDE real QEMU guests running the agent image.

One volantd (child-process supervisor, runtime.console_shell, its TCP API on every address of
its private network namespace) runs three guests of a plugin whose workload is busybox httpd on
port 7000: a and b on the LAN, c created with `isolated: true`. Commands run in the guests' root
console shells. First without the nftables tables (a host where `volar setup` did not run):
b's agent still refuses a (401, no secret), its bare /healthz tells nothing, and volantd warned
at start. Then with the tables `volar setup` writes, loaded into the namespace: a cannot even
reach b's agent port or volantd's API, the workload ports stay a LAN between a and b, and c is
cut off from both; the host reaches every agent with its secret. Last, a VM from before agent
secrets gets one at its next start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from tests.integration.daemon import GUEST_DIR, ROOT, Daemon, build_guest, raw, running_daemon
from tests.integration.test_console import ANSWER, ASK
from volant.client import VolantClient
from volant.plugins.signing import generate_keypair, sign
from volant.setup.nft import ruleset_file

pytestmark = pytest.mark.integration

HELLO = ROOT / "examples" / "plugins" / "hello"
API_PORT = 7777
HOST_IP = "192.168.127.1"
# The workload: a plain HTTP server on the guest's LAN port, serving the hello plugin's files.
LAN_WORKLOAD = {
    "type": "process",
    "entrypoint": ["httpd", "-f", "-p", "7000", "-h", "/opt/volant/plugins/hello"],
    "restart": "always",
}
BOOT = 240.0  # three TCG guests booting at once on a busy two-core machine
# An HTTP/1.0 request from inside a guest, with the guest's python3: busybox wget crashed
# (SIGSEGV) in the agent image when this test was written.
GET_PY = """\
import socket, sys
method, host, port, path = sys.argv[1:5]
try:
    conn = socket.create_connection((host, int(port)), timeout=6)
    conn.sendall(f"{method} {path} HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n".encode())
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    print(data.decode(errors="replace"))
except OSError as exc:
    print("no answer:", exc)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    write_plugin_cpio(HELLO)
    keys = tmp_path_factory.mktemp("keys")
    private, _public = generate_keypair(keys, "tests")
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "runtime.console_shell": True,
        "plugins.trusted_keys_dir": str(keys),
        "api.listen": f"0.0.0.0:{API_PORT}",  # so that a guest could try the API on the bridge
    }
    with running_daemon(tmp_path_factory.mktemp("volantd"), settings, plugins=()) as d:
        install_lan_plugin(d, tmp_path_factory.mktemp("lan"), private)
        for name, isolated in (("a", False), ("b", False), ("c", True)):
            body = {"name": name, "plugin": "lan", "memory_mb": 192, "isolated": isolated}
            status, _ctype, vm = raw(d, "POST", "/api/v1/vms", body)
            assert (status, vm["isolated"]) == (201, isolated), vm
        script = base64.b64encode(GET_PY.encode()).decode()
        for name in ("a", "b", "c"):
            asyncio.run(shell_up(d, name))
            in_guest(d, name, f"echo {script} | base64 -d > /tmp/get.py")
        for name in ("a", "b", "c"):
            agent_up(d, name)
        yield d


def agent_up(daemon: Daemon, vm: str, timeout: float = BOOT) -> None:
    """Return once the VM's agent answers the host (with the VM's secret)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = daemon.agent_curl(vm, ip_of(daemon, vm), "/v1/status")
        if proc.returncode == 0 and '"lan"' in proc.stdout:
            return
        assert time.monotonic() < deadline, f"the agent of {vm} never answered: {proc.stderr}"
        time.sleep(1)


def install_lan_plugin(daemon: Daemon, directory: Path, key: Path) -> None:
    doc: dict[str, Any] = json.loads((HELLO / "manifest.json").read_text())
    for key_name in ("actions", "openapi"):
        doc.pop(key_name)
    doc.update(name="lan", runtime="lan", workload=LAN_WORKLOAD)
    shutil.copy(HELLO / "hello.cpio", directory / "hello.cpio")
    manifest = directory / "lan.json"
    manifest.write_text(json.dumps(doc))
    body = {
        "manifest": manifest.read_text(),
        "signature": sign(manifest.read_bytes(), key),
        "origin": manifest.as_uri(),
    }
    status, _ctype, plugin = raw(daemon, "POST", "/api/v1/plugins", body)
    assert status == 201, plugin


async def shell_up(daemon: Daemon, vm: str) -> None:
    """Return once the VM's console shell answers (the guest has booted)."""
    async with VolantClient(daemon.api, timeout=60) as client, client.console(vm) as stream:
        seen = b""
        deadline = time.monotonic() + BOOT
        while ANSWER not in seen:
            assert time.monotonic() < deadline, f"{vm} never booted:\n{daemon.log_text()[-3000:]}"
            await stream.send(ASK)
            try:
                async with asyncio.timeout(3):
                    while ANSWER not in seen:
                        data = await stream.receive()
                        assert data is not None, stream.ending()
                        seen += data
            except TimeoutError:
                continue


def in_guest(daemon: Daemon, vm: str, command: str, timeout: float = 60) -> str:
    """Run command in the VM's root console shell; what it printed (with the echoed line)."""

    async def run() -> str:
        marker = f"done-{secrets.token_hex(4)}"
        # The shell computes the end mark: the terminal's echo of the line never matches it.
        line = f"{command}; echo {marker}-$((6*7))\n"
        async with (
            VolantClient(daemon.api, timeout=60) as client,
            client.console(vm, force=True) as stream,
        ):
            await stream.send(line.encode())
            seen = b""
            async with asyncio.timeout(timeout):
                while f"{marker}-42".encode() not in seen:
                    data = await stream.receive()
                    assert data is not None, stream.ending()
                    seen += data
        return seen.decode(errors="replace").split(f"{marker}-42")[0]

    return asyncio.run(run())


def fetch(daemon: Daemon, vm: str, url: str, method: str = "GET") -> str:
    """The HTTP answer (head and body) to method url from inside vm, or `no answer: …`; then
    `rc=<exit status>` (0: an answer came)."""
    parts = urlsplit(url)
    request = f"{method} {parts.hostname} {parts.port} {parts.path}"
    return in_guest(daemon, vm, f"timeout 30 python3 /tmp/get.py {request} 2>&1; echo rc=$?")


def ip_of(daemon: Daemon, vm: str) -> str:
    address: str = raw(daemon, "GET", f"/api/v1/vms/{vm}")[2]["ip_address"]
    return address


def host_status(daemon: Daemon, vm: str) -> dict[str, Any]:
    """The VM's agent /v1/status as the host gets it, with the VM's secret."""
    proc = daemon.agent_curl(vm, ip_of(daemon, vm), "/v1/status")
    assert proc.returncode == 0, proc.stderr
    status: dict[str, Any] = json.loads(proc.stdout)
    return status


def refused(answer: str) -> bool:
    return "HTTP/1.1 401 Unauthorized" in answer and '{"error": "unauthorized"}' in answer


def unreachable(answer: str) -> bool:
    """No HTTP answer at all: the connection never got through."""
    return "HTTP/1." not in answer and "no answer:" in answer and "rc=1" in answer


def test_without_the_bridge_table_the_agent_still_wants_its_secret(daemon: Daemon) -> None:
    b = ip_of(daemon, "b")
    assert refused(fetch(daemon, "a", f"http://{b}:8080/v1/status"))
    assert refused(fetch(daemon, "a", f"http://{b}:8080/v1/logs"))
    # The power-off the issue reported: refused, and b keeps running.
    assert refused(fetch(daemon, "a", f"http://{b}:8080/v1/poweroff", "POST"))
    # The health probe answers anyone, and says nothing but ok.
    health = fetch(daemon, "a", f"http://{b}:8080/healthz")
    assert '{"status": "ok"}' in health
    assert '"workload"' not in health
    time.sleep(2)
    assert raw(daemon, "GET", "/api/v1/vms/b")[2]["status"] == "running"
    assert host_status(daemon, "b")["manifest"]["name"] == "lan"
    # The agent listens on the guest's own address only.
    listening = in_guest(daemon, "b", "netstat -ltn | grep ':8080 '")
    assert f"{b}:8080" in listening
    assert "0.0.0.0:8080" not in listening
    # Nothing stops a guest reaching volantd's API here: that is what the table is for, and
    # volantd said so when it started.
    assert '{"status": "ok"}' in fetch(daemon, "a", f"http://{HOST_IP}:{API_PORT}/healthz")
    log = daemon.log_text()
    assert "nftables table bridge volant is missing" in log
    assert "run `volar setup`" in log


def test_with_the_setup_tables_guests_are_kept_apart(daemon: Daemon, tmp_path: Path) -> None:
    rules = tmp_path / "nftables.conf"
    rules.write_text(ruleset_file("vbr0", IPv4Network("192.168.127.0/24"), API_PORT))
    loaded = daemon.in_ns("nft", "-f", str(rules))
    assert loaded.returncode == 0, loaded.stderr
    a, b, c = (ip_of(daemon, vm) for vm in ("a", "b", "c"))

    # Another guest's agent: not even reachable. volantd's API: closed to guests.
    assert unreachable(fetch(daemon, "a", f"http://{b}:8080/v1/status"))
    assert unreachable(fetch(daemon, "a", f"http://{b}:8080/healthz"))
    assert unreachable(fetch(daemon, "a", f"http://{HOST_IP}:{API_PORT}/healthz"))
    # Workload ports stay a LAN between guests that are not isolated ...
    assert "HELLO_PORT" in fetch(daemon, "a", f"http://{b}:7000/app.py")
    assert "HELLO_PORT" in fetch(daemon, "b", f"http://{a}:7000/app.py")
    # ... and the isolated one reaches no other guest, nor does any guest reach it.
    assert unreachable(fetch(daemon, "a", f"http://{c}:7000/app.py"))
    assert unreachable(fetch(daemon, "c", f"http://{b}:7000/app.py"))
    # It still reaches the host, as every guest does.
    server = subprocess.Popen(
        ["ip", "netns", "exec", daemon.ns, "python3", "-m", "http.server", "-b", HOST_IP, "9999",
         "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        (tmp_path / "host.txt").write_text("the host answers\n")
        deadline = time.monotonic() + 30
        while "the host answers" not in (
            answer := fetch(daemon, "c", f"http://{HOST_IP}:9999/host.txt")
        ):
            assert time.monotonic() < deadline, answer
    finally:
        server.kill()
        server.wait()

    # The host reaches every agent, with each VM's own secret, and every workload.
    for vm in ("a", "b", "c"):
        assert host_status(daemon, vm)["manifest"]["name"] == "lan"
        assert daemon.agent_secret(vm) not in in_guest(daemon, "a", "cat /proc/cmdline")
    assert "HELLO_PORT" in daemon.http_get(f"http://{c}:7000/app.py")
    lines = daemon.call(lambda client: client.request("GET", "/api/v1/vms/c/logs"))["lines"]
    assert any("workload started" in line["text"] for line in lines), lines


def test_a_vm_from_before_agent_secrets_gets_one_at_its_next_start(daemon: Daemon) -> None:
    daemon.call(lambda client: client.stop_vm("a"))
    old = daemon.agent_secret("a")
    with sqlite3.connect(daemon.tmp / "state" / "state.db") as db:
        db.execute("UPDATE vms SET agent_secret = '' WHERE name = 'a'")  # as migration 4 left it
    daemon.call(lambda client: client.start_vm("a"))
    asyncio.run(shell_up(daemon, "a"))
    new = daemon.agent_secret("a")
    assert new
    assert new != old
    with sqlite3.connect(daemon.tmp / "state" / "state.db") as db:
        assert db.execute("SELECT agent_secret FROM vms WHERE name = 'a'").fetchone() == (new,)
    assert "VM a gets its first agent secret" in daemon.log_text()
    agent_up(daemon, "a")  # with the new secret, read from the new config disk
