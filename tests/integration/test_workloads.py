"""Real workloads, end to end: OCI images built from Debian packages (examples/images), pushed
to a real registry, built into plugins with `volar plugins build --image docker://…`, and booted
in real QEMU guests (TCG) under a real volantd in the registry's network namespace.

- nginx serves its page over the bridge, runs as the image's user (www-data, not root), and the
  file its second layer deleted (a whiteout) is absent in the guest.
- Redis keeps what it was told on a volume: across a stop and start of its VM, and across a
  delete and a new VM created with the same volume.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.daemon import (
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.example_image import RECIPE, nginx_layout, redis_layout
from tests.integration.registry import HOST, Registry, serving_registry
from tests.integration.test_console import ANSWER, ASK, converse
from tests.integration.test_plugin_build import daemon_settings
from tests.readme import blocks
from volant.client import VolantClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, registry, umoci and QEMU need root"),
]

WWW_DATA = 33  # Debian's fixed uid of www-data (base-passwd)

# A RESP client for one command: Redis' protocol is simple enough to speak from a socket.
_REDIS = """
import socket, sys
host, *args = sys.argv[1:]
with socket.create_connection((host, 6379), timeout=5) as s:
    s.sendall(b"*%d\\r\\n" % len(args) + b"".join(
        b"$%d\\r\\n%s\\r\\n" % (len(a.encode()), a.encode()) for a in args))
    reply = s.recv(65536).decode()
head, _, rest = reply.partition("\\r\\n")
print(rest.partition("\\r\\n")[0] if head.startswith("$") and head != "$-1" else head)
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    nginx, redis = nginx_layout(), redis_layout()
    with serving_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(nginx, "latest", "examples/nginx:1")
        reg.push(redis, "latest", "examples/redis:7")
        yield reg


@pytest.fixture(scope="module")
def daemon(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    settings = daemon_settings(
        registry,
        **{
            "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
            "runtime.boot_timeout": 120,
            "runtime.console_shell": True,
            "vm.disk_size_mb": 512,
        },
    )
    d = start_daemon(registry.ns, tmp_path_factory.mktemp("volantd"), settings, plugins=())
    try:
        yield d
    finally:
        stop_daemon(d)


def volar(daemon: Daemon, *args: str) -> str:
    proc = daemon.volar(*args)
    assert proc.returncode == 0, f"volar {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def in_guest(daemon: Daemon, name: str, command: str) -> str:
    """What command prints in the guest's console shell (the agent image's root, where the
    workload's root is /volant/root)."""

    async def run(client: VolantClient) -> str:
        async with client.console(name) as stream:
            await converse(stream, ASK, ANSWER, timeout=90)
            # $((…)) so that the shell's echo of the line itself never matches.
            await stream.send(f"echo BEGIN-$((1+1)); {command}; echo END-$((2+2))\n".encode())
            seen = b""
            async with asyncio.timeout(60):
                while b"END-4" not in seen.partition(b"BEGIN-2")[2]:
                    data = await stream.receive()
                    assert data is not None, "the console closed"
                    seen += data
        between = seen.partition(b"BEGIN-2")[2].partition(b"END-4")[0]
        return between.decode(errors="replace").replace("\r", "").strip()

    return str(daemon.call(run))


def redis(daemon: Daemon, ip: str, *args: str, timeout: float = 90) -> str:
    """Redis' answer to one command, retried until the server listens and has loaded its
    dataset (until then it answers -LOADING)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = daemon.in_ns("python3", "-c", _REDIS, ip, *args)
        answer = str(proc.stdout).strip()
        if proc.returncode == 0 and not answer.startswith("-LOADING"):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"redis at {ip} does not answer: {proc.stderr}")
        time.sleep(1)


def nginx_plugin(daemon: Daemon) -> None:
    """The nginx plugin, built from the example image (once per module)."""
    if daemon.volar("plugins", "show", "nginx").returncode == 0:
        return
    image = f"docker://{HOST}/examples/nginx:1"
    volar(daemon, "plugins", "build", "--image", image, "--name", "nginx", "--health-path", "/")


def test_nginx_serves_its_page_as_its_user_without_the_whited_out_file(daemon: Daemon) -> None:
    nginx_plugin(daemon)
    volar(daemon, "vms", "create", "web", "--plugin", "nginx")
    vm = wait_status(daemon, "web", "running", timeout=180)
    page = daemon.http_get(f"http://{vm['ip_address']}/", timeout=60)
    assert page == (RECIPE / "index.html").read_text()

    users = in_guest(daemon, "web", "for p in $(pidof nginx); do stat -c %u /proc/$p; done")
    assert set(users.split()) == {str(WWW_DATA)}
    site = "/volant/root/etc/nginx/sites-enabled/default"
    assert in_guest(daemon, "web", f"test -e {site} && echo present || echo absent") == "absent"
    assert in_guest(daemon, "web", "test -d /volant/root/var/www/site && echo yes") == "yes"
    volar(daemon, "vms", "delete", "web")


def test_the_documented_published_port(daemon: Daemon) -> None:
    """docs/networking.md's block, run as it is: volar as the operator's CLI; curl and nft on
    the host (volantd's namespace)."""
    nginx_plugin(daemon)
    said: dict[str, str] = {}
    for line in blocks("published-ports", (ROOT / "docs" / "networking.md").read_text()):
        argv = shlex.split(line)
        proc = daemon.volar(*argv[1:]) if argv[0] == "volar" else daemon.in_ns(*argv)
        assert proc.returncode == 0, f"{line}: {proc.stdout}{proc.stderr}"
        said[" ".join(argv[:3])] = proc.stdout
    assert "8080:80" in said["volar vms list"]
    assert said["curl -sS http://127.0.0.1:8080/"] == (RECIPE / "index.html").read_text()
    assert '"vm:web"' in said["nft list chain"]
    assert "8080:80/tcp" in said["volar vms get"]
    assert '"vm:web"' not in daemon.in_ns("nft", "list", "table", "inet", "volant").stdout


def test_redis_keeps_its_data_on_a_volume(daemon: Daemon) -> None:
    volar(daemon, "volumes", "create", "redisdata", "--size", "64M")
    volar(daemon, "plugins", "build", "--image", f"docker://{HOST}/examples/redis:7",
          "--name", "redis")  # fmt: skip
    volar(daemon, "vms", "create", "db", "--plugin", "redis", "--volume", "redisdata:/data")
    ip = wait_status(daemon, "db", "running", timeout=180)["ip_address"]
    assert redis(daemon, ip, "SET", "greeting", "hello from a volume") == "+OK"

    volar(daemon, "vms", "stop", "db")
    volar(daemon, "vms", "start", "db")
    ip = wait_status(daemon, "db", "running", timeout=180)["ip_address"]
    assert redis(daemon, ip, "GET", "greeting") == "hello from a volume"
    assert redis(daemon, ip, "SET", "count", "2") == "+OK"

    # Deleting a running VM with a writable volume shuts it down cleanly: the agent unmounts the
    # volume, so its ext4 has no journal left to recover.
    volar(daemon, "vms", "delete", "db")
    volume = daemon.tmp / "state" / "volumes" / "redisdata.img"
    header = subprocess.run(
        ["dumpe2fs", "-h", str(volume)], capture_output=True, text=True, check=True
    )
    assert "needs_recovery" not in header.stdout
    assert "Filesystem state:         clean" in header.stdout
    volar(daemon, "vms", "create", "db2", "--plugin", "redis", "--volume", "redisdata:/data")
    ip = wait_status(daemon, "db2", "running", timeout=180)["ip_address"]
    assert redis(daemon, ip, "GET", "greeting") == "hello from a volume"
    assert redis(daemon, ip, "GET", "count") == "2"
    # Redis runs as the image's redis user (not root) and writes as that user to the volume,
    # which the agent gave /data's owner when it was new.
    uids = set(in_guest(daemon, "db2", "stat -c %u /proc/$(pidof redis-server)").split())
    owner = in_guest(daemon, "db2", "stat -c %u /volant/root/data/appendonlydir")
    assert uids == {owner}
    assert owner != "0"
    volar(daemon, "vms", "delete", "db2")
    volar(daemon, "volumes", "delete", "redisdata")
