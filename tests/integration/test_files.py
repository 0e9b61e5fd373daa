"""Files in and out of a rootfs plugin's VM on a real QEMU guest (TCG) under a real volantd:
`volar vms cp` both ways for a file and a directory (modes and mtimes kept, docker cp's
placement), the file visible to the workload in its own root (its httpd serves it), owned by
the workload's user; hostile symlinks and tar members that stay in the root and never reach the
agent's own files; an initramfs plugin's root without the agent's files; and vm.files_max_mb
(413 both ways). REST and MCP go through the same route.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shlex
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.integration.daemon import (
    BIN,
    GUEST_DIR,
    Daemon,
    build_guest,
    netns,
    raw,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.mcp_client import call, ok, over_unix, results, tool_error
from tests.integration.rootfs_images import rootfs_image, write_rootfs_plugin
from tests.readme import blocks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, taps and QEMU need root"),
]

WWW = "/home/app/www"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    state = tmp_path_factory.mktemp("volantd")
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "runtime.boot_timeout": 90,
        "vm.disk_size_mb": 256,
        "vm.files_max_mb": 1,
    }
    with netns() as ns:
        d = start_daemon(ns, state, settings, plugins=())
        try:
            path = write_rootfs_plugin(d.tmp / "plugins", "app", rootfs_image())
            status, _, reply = raw(
                d,
                "POST",
                "/api/v1/plugins",
                {"manifest": path.read_text(), "origin": path.as_uri()},
            )
            assert status == 201, reply
            status, _, vm = raw(d, "POST", "/api/v1/vms", {"name": "web", "plugin": "app"})
            assert status == 201, vm
            wait_status(d, "web", "running", timeout=180)
            yield d
        finally:
            stop_daemon(d)


def vm_ip(daemon: Daemon) -> str:
    ip: str = daemon.call(lambda c: c.get_vm("web"))["ip_address"]
    return ip


def files(daemon: Daemon, method: str, path: str, body: bytes = b"", **query: str) -> Any:
    """One raw request to VM web's files route: (status, content type, body bytes)."""
    return files_of(daemon, "web", method, path, body, **query)


def files_of(
    daemon: Daemon, vm: str, method: str, path: str, body: bytes = b"", **query: str
) -> Any:
    """One raw request to VM vm's files route."""

    async def go() -> tuple[int, str, bytes]:
        sock = daemon.api.removeprefix("unix:")
        headers = {"Content-Type": "application/x-tar"} if query.pop("tar", "") else {}
        url = f"http://localhost/api/v1/vms/{vm}/files?{urlencode({'path': path, **query})}"
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.request(method, url, data=body or None, headers=headers) as resp,
        ):
            return resp.status, resp.content_type, await resp.read()

    return asyncio.run(go())


def tar_of(*members: tuple[str, bytes, str]) -> bytes:
    """(name, data, link) → a tar: a symlink when link is set, else a file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_cp_a_file_in_the_workload_serves_it_and_it_comes_back_alike(
    daemon: Daemon, tmp_path: Path
) -> None:
    local = tmp_path / "hello.txt"
    local.write_text("hello from the host\n")
    os.chmod(local, 0o640)
    os.utime(local, (1_600_000_000, 1_600_000_000))
    done = daemon.volar("vms", "cp", str(local), f"web:{WWW}")
    assert done.returncode == 0, done.stderr
    # In the workload's own root: its httpd (uid 1000, chrooted) serves it.
    assert daemon.http_get(f"http://{vm_ip(daemon)}:8081/hello.txt") == "hello from the host\n"
    back = tmp_path / "back.txt"
    done = daemon.volar("vms", "cp", f"web:{WWW}/hello.txt", str(back))
    assert done.returncode == 0, done.stderr
    assert back.read_text() == "hello from the host\n"
    assert stat.S_IMODE(back.stat().st_mode) == 0o640
    assert back.stat().st_mtime == 1_600_000_000
    status, _, body = files(daemon, "GET", f"{WWW}/hello.txt")
    assert (status, body) == (200, b"hello from the host\n")


def test_cp_a_directory_in_and_out(daemon: Daemon, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>site</h1>\n")
    (site / "css" / "a.css").write_text("body{}\n")
    (site / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(site / "run.sh", 0o750)
    (site / "latest").symlink_to("index.html")
    # Into an existing directory: inside it, under its own name.
    assert daemon.volar("vms", "cp", str(site), f"web:{WWW}").returncode == 0
    assert daemon.http_get(f"http://{vm_ip(daemon)}:8081/site/css/a.css") == "body{}\n"
    # Onto a new path: it becomes that path.
    assert daemon.volar("vms", "cp", str(site), f"web:{WWW}/copy").returncode == 0
    assert daemon.http_get(f"http://{vm_ip(daemon)}:8081/copy/index.html") == "<h1>site</h1>\n"
    out = tmp_path / "out"
    out.mkdir()
    done = daemon.volar("vms", "cp", f"web:{WWW}/copy", str(out))
    assert done.returncode == 0, done.stderr
    got = out / "copy"
    assert (got / "css" / "a.css").read_text() == "body{}\n"
    assert stat.S_IMODE((got / "run.sh").stat().st_mode) == 0o750
    assert os.readlink(got / "latest") == "index.html"


def test_files_belong_to_the_workloads_user_unless_the_caller_says(daemon: Daemon) -> None:
    tar = tar_of(("owned/probe", b"x\n", ""))
    status, _, body = files(daemon, "PUT", "/home/app", tar, tar="1")
    assert status == 201, body
    # The workload (uid 1000) may write where it owns; /etc is root's.
    status, _, body = files(daemon, "PUT", "/etc/motd", b"hi\n")
    assert status == 403, body
    assert "--user root" in json.loads(body)["hint"]
    status, _, body = files(daemon, "PUT", "/etc/motd", b"hi\n", user="root")
    assert status == 201, body


def test_hostile_symlinks_and_tar_members_stay_in_the_root(daemon: Daemon) -> None:
    links = tar_of(("evil", b"", "/"), ("up", b"", "../../../.."))
    status, _, body = files(daemon, "PUT", "/home/app", links, tar="1")
    assert status == 201, body
    hostname = b"web\n"
    for path in ("/home/app/evil/etc/hostname", "/home/app/up/etc/hostname", "/../../etc/hostname"):
        assert files(daemon, "GET", path)[::2] == (200, hostname), path
    # The agent's own code and config live in its initramfs, never in the workload's root.
    for path in ("/home/app/evil/usr/lib/volant-agent", "/home/app/up/init", "/../../init"):
        assert files(daemon, "GET", path)[0] == 404, path
    # A write through the link lands in the root too.
    status, _, body = files(daemon, "PUT", "/home/app/evil/srv/planted", b"p\n", user="root")
    assert status == 201, body
    assert files(daemon, "GET", "/srv/planted")[::2] == (200, b"p\n")
    for bad, why in (
        (tar_of(("../x", b"x", "")), "leaves its directory"),
        (tar_of(("l", b"", "/"), ("l/etc/passwd", b"owned\n", "")), "symlink"),
        (tar_of(("evil/etc/passwd", b"owned\n", "")), "symlink"),
    ):
        status, _, body = files(daemon, "PUT", "/home/app", bad, tar="1", user="root")
        assert status == 400, body
        assert why in json.loads(body)["detail"]
    status, _, passwd = files(daemon, "GET", "/etc/passwd")
    assert status == 200
    assert b"owned" not in passwd


def test_the_size_limit_is_a_clear_413(daemon: Daemon, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20))
    done = daemon.volar("vms", "cp", str(big), f"web:{WWW}")
    assert done.returncode == 1
    assert "vm.files_max_mb" in done.stderr
    status, _, body = files(daemon, "GET", "/srv/ballast")
    assert status == 413, body
    assert "vm.files_max_mb" in json.loads(body)["detail"] + json.loads(body).get("hint", "")
    done = daemon.volar("vms", "cp", "web:/srv", str(tmp_path))
    assert done.returncode == 1
    assert "limit" in done.stderr


def test_the_documented_commands(daemon: Daemon, tmp_path: Path) -> None:
    """docs/workloads.md's files block, run as it is in a directory holding ./site and ./motd."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<h1>documented</h1>\n")
    (tmp_path / "motd").write_text("welcome\n")
    for line in blocks("files", (ROOT / "docs" / "workloads.md").read_text()):
        argv = shlex.split(line)
        assert argv[0] == "volar", line
        proc = subprocess.run(
            [str(BIN / "volar"), "--api", daemon.api, *argv[1:]],
            cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
    page = daemon.http_get(f"http://{vm_ip(daemon)}:8081/site/index.html")
    assert page == "<h1>documented</h1>\n"
    assert (tmp_path / "site-copy" / "index.html").read_text() == "<h1>documented</h1>\n"
    assert (tmp_path / "hostname").read_text() == "web\n"
    assert files(daemon, "GET", "/etc/motd")[::2] == (200, b"welcome\n")


def test_mcp_write_file_and_read_file(daemon: Daemon) -> None:
    binary = base64.b64encode(bytes(range(256))).decode()
    answers = results(
        over_unix(
            daemon.api,
            [
                call("write_file", name="web", path=f"{WWW}/mcp.txt", content="from a model\n"),
                call("read_file", name="web", path=f"{WWW}/mcp.txt"),
                call("write_file", name="web", path="/home/app/blob", content=binary,
                     encoding="base64", mode="0600"),
                call("read_file", name="web", path="/home/app/blob"),
                call("read_file", name="web", path="/srv/ballast", max_bytes=1024),
                call("read_file", name="web", path="/home/app"),
            ],
        )
    )  # fmt: skip
    assert ok(answers[0])["entries"] == 1
    assert ok(answers[1]) == {"path": f"{WWW}/mcp.txt", "encoding": "text",
                              "content": "from a model\n", "size": 13}  # fmt: skip
    assert daemon.http_get(f"http://{vm_ip(daemon)}:8081/mcp.txt") == "from a model\n"
    assert ok(answers[3])["encoding"] == "base64"
    assert ok(answers[3])["content"] == binary
    assert tool_error(answers[4])["code"] == "TooLarge"
    assert tool_error(answers[5])["code"] == "InvalidArgument"


def test_an_upload_without_length_is_spooled(daemon: Daemon) -> None:
    """A chunked body (no Content-Length) reaches the guest whole; over the limit it is a 413."""

    async def chunks(count: int) -> Any:
        for _ in range(count):
            yield b"0123456789abcdef" * 4096  # 64 KiB

    async def put(count: int) -> tuple[int, bytes]:
        sock = daemon.api.removeprefix("unix:")
        url = f"http://localhost/api/v1/vms/web/files?path={WWW}/chunked.bin"
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.put(url, data=chunks(count)) as resp,
        ):
            return resp.status, await resp.read()

    status, body = asyncio.run(put(8))
    assert status == 201, body
    status, _, data = files(daemon, "GET", f"{WWW}/chunked.bin")
    assert (status, len(data)) == (200, 8 * 65536)
    status, body = asyncio.run(put(17))  # 1088 KiB: over vm.files_max_mb (1)
    assert status == 413, body
    assert "vm.files_max_mb" in json.loads(body)["detail"]


def test_an_initramfs_plugin_gets_its_root_without_the_agents_files(daemon: Daemon) -> None:
    """The workload shares the agent's root: files see it through a view without the agent's
    code, init and config, and /tmp (the workload's scratch) is the workload's own."""
    script = "mkdir -p /tmp/www && exec httpd -f -p 8081 -h /tmp/www"
    daemon.install_plugin(
        "tiny", workload={"type": "process", "entrypoint": ["/bin/sh", "-c", script]}
    )
    status, _, vm = raw(daemon, "POST", "/api/v1/vms", {"name": "tiny", "plugin": "tiny"})
    assert status == 201, vm
    ip = wait_status(daemon, "tiny", "running", timeout=180)["ip_address"]

    def tiny(method: str, path: str, body: bytes = b"", **query: str) -> Any:
        return files_of(daemon, "tiny", method, path, body, **query)

    # Without a health check the VM runs before its agent listens: wait for it.
    deadline = time.monotonic() + 90
    while (answer := tiny("PUT", "/tmp/www/hi.txt", b"hi from the host\n"))[0] in (409, 503):
        if time.monotonic() > deadline:
            console = daemon.call(lambda c: c.console_log("tiny", 200)).decode(errors="replace")
            raise AssertionError(f"{answer}\n{console}")
        time.sleep(1)
    assert answer[0] == 201, answer
    assert daemon.http_get(f"http://{ip}:8081/hi.txt") == "hi from the host\n"
    assert tiny("GET", "/tmp/www/hi.txt")[::2] == (200, b"hi from the host\n")
    assert tiny("GET", "/etc/passwd")[0] == 200  # the image's own files are there
    status, _, body = tiny(
        "PUT", "/tmp", tar_of(("evil", b"", "/"), ("up", b"", "../../..")), tar="1"
    )
    assert status == 201, body
    for path in (
        "/usr/lib/volant-agent/volant_agent/app.pyc",
        "/tmp/evil/usr/lib/volant-agent/volant_agent/app.pyc",
        "/tmp/up/lib/volant/boot.sh",
        "/proc/1/environ",
        "/tmp/evil/proc/self/environ",
        "/dev/vda",
        "/volant/view/init",
    ):
        assert tiny("GET", path)[0] == 404, path
    for path in ("/init", "/tmp/evil/etc/acpid.conf"):
        assert tiny("GET", path)[::2] == (200, b""), path  # covered by an empty file
    status, _, body = tiny("PUT", "/usr/lib/volant-agent/volant_agent/app.pyc", b"x")
    assert status in (403, 404, 409), body
    daemon.call(lambda c: c.delete_vm("tiny"))
