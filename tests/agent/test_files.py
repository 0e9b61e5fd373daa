"""/v1/files on real files through the agent's own HTTP server: a file and a tar in and out of a
workload root, modes, mtimes and owners kept, and hostile symlinks, `..` and tar members that
cannot reach past the root (the worker chroots, so these tests run as root, as the agent does)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from volant_agent.app import Agent, make_handler
from volant_agent.files import streams_files
from volant_agent.http import MAX_HEAD, ClientResponse, connection_handler, fetch
from volant_agent.logs import LogBuffer
from volant_agent.manifest import Workload
from volant_agent.users import Identity
from volant_agent.workload import Supervisor

pytestmark = pytest.mark.unit

SECRET = "s" * 32
APP = Identity(1000, 1000, (1000,), "app", "/home/app")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "etc" / "hostname").write_text("inside\n")
    for d in ("home/app", "data"):
        (root / d).mkdir(parents=True)
        os.chown(root / d, 1000, 1000)
    # The workload's hostile links: every one must resolve inside the root.
    (root / "data" / "evil").symlink_to("/")
    (root / "data" / "up").symlink_to("../../..")
    # A file next to the root: the agent's own, never reachable.
    (tmp_path / "agent-secret").write_text("the agent's secret\n")
    return root


async def _serve(agent: Agent) -> AsyncIterator[str]:
    server = await asyncio.start_server(
        connection_handler(make_handler(agent), streams=streams_files),
        "127.0.0.1",
        0,
        limit=MAX_HEAD,
    )
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def _agent(root: Path | None, identity: Identity | None = APP) -> Agent:
    sup = Supervisor(Workload(entrypoint=("/bin/true",)), LogBuffer(), root=root, identity=identity)
    return Agent(None, "test", LogBuffer(), sup, lambda: None, secret=SECRET)


async def call(
    root: Path | None, method: str, body: bytes = b"", tar: bool = False, **query: object
) -> ClientResponse:
    headers = {"X-Volant-Agent-Secret": SECRET}
    if tar:
        headers["Content-Type"] = "application/x-tar"
    async for url in _serve(_agent(root)):
        target = f"{url}/v1/files?{urlencode(query)}"
        return await fetch(method, target, body=body, headers=headers, timeout=30)
    raise AssertionError("unreachable")


def run(coro: object) -> ClientResponse:
    return asyncio.run(coro)  # type: ignore[arg-type]


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1_600_000_000
    return info


def test_a_file_goes_in_as_the_workloads_user_with_its_mode_and_mtime(root: Path) -> None:
    reply = run(
        call(
            root,
            "PUT",
            b"#!/bin/sh\necho hi\n",
            path="/home/app/bin/run.sh",
            mode="750",
            mtime="1600000000.5",
        )
    )
    assert reply.status == 201, reply.body
    written = root / "home/app/bin/run.sh"
    st = written.stat()
    assert written.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1000)
    assert st.st_mtime == 1600000000.5
    back = run(call(root, "GET", path="/home/app/bin/run.sh"))
    assert back.status == 200
    assert back.body == b"#!/bin/sh\necho hi\n"
    assert back.headers["x-volant-file-mode"] == "0750"
    assert float(back.headers["x-volant-file-mtime"]) == 1600000000.5


def test_the_caller_may_write_as_root_and_the_user_may_not_write_everywhere(root: Path) -> None:
    refused = run(call(root, "PUT", b"x", path="/etc/motd"))
    assert refused.status == 403, refused.body
    done = run(call(root, "PUT", b"hello\n", path="/etc/motd", user="root"))
    assert done.status == 201, done.body
    assert (root / "etc/motd").stat().st_uid == 0


def test_hostile_symlinks_resolve_inside_the_root(root: Path, tmp_path: Path) -> None:
    for link in ("/data/evil/etc/hostname", "/data/up/etc/hostname", "/data/../../../etc/hostname"):
        reply = run(call(root, "GET", path=link))
        assert (reply.status, reply.body) == (200, b"inside\n"), link
    assert run(call(root, "GET", path="/data/up/agent-secret")).status == 404
    assert run(call(root, "GET", path="/../agent-secret")).status == 404
    reply = run(call(root, "PUT", b"planted\n", path="/data/evil/planted", user="root"))
    assert reply.status == 201, reply.body
    assert (root / "planted").read_bytes() == b"planted\n"
    assert not (Path("/planted")).exists()
    reply = run(call(root, "PUT", b"x", path="/data/up/agent-secret", user="root"))
    assert reply.status == 201
    assert (tmp_path / "agent-secret").read_text() == "the agent's secret\n"


def test_a_symlink_at_the_target_is_replaced_not_followed(root: Path) -> None:
    (root / "data" / "passwd-link").symlink_to("/etc/passwd")
    before = (root / "etc/passwd").read_bytes()
    assert run(call(root, "PUT", b"new\n", path="/data/passwd-link")).status == 201
    assert (root / "etc/passwd").read_bytes() == before
    assert not (root / "data/passwd-link").is_symlink()


def test_a_directory_tar_goes_inside_an_existing_directory_or_becomes_the_path(root: Path) -> None:
    body = tar_of(
        (member("site", tarfile.DIRTYPE, mode=0o755), b""),
        (member("site/index.html", mode=0o640), b"<h1>hi</h1>\n"),
        (member("site/run", mode=0o4755), b"#!/bin/sh\n"),
        (member("site/latest", tarfile.SYMTYPE, link="index.html"), b""),
        (member("site/same", tarfile.LNKTYPE, mode=0o640, link="site/index.html"), b""),
    )
    inside = run(call(root, "PUT", body, tar=True, path="/data"))
    assert inside.status == 201, inside.body
    site = root / "data/site"
    assert (site / "index.html").read_bytes() == b"<h1>hi</h1>\n"
    assert stat.S_IMODE((site / "index.html").stat().st_mode) == 0o640
    assert stat.S_IMODE((site / "run").stat().st_mode) == 0o755  # no set-id bit
    assert os.readlink(site / "latest") == "index.html"
    assert (site / "same").stat().st_ino == (site / "index.html").stat().st_ino
    assert (site / "index.html").stat().st_uid == 1000
    assert (site / "index.html").stat().st_mtime == 1_600_000_000
    renamed = run(call(root, "PUT", body, tar=True, path="/data/www"))
    assert renamed.status == 201, renamed.body
    assert (root / "data/www/index.html").is_file()
    back = run(call(root, "GET", path="/data/www"))
    assert back.status == 200
    assert back.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(back.body)) as tar:
        got = {m.name: m for m in tar.getmembers()}
    assert set(got) == {"www", "www/index.html", "www/run", "www/latest", "www/same"}
    assert got["www/index.html"].mode == 0o640
    assert got["www/latest"].linkname == "index.html"


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([(member("../x"), b"x")], "leaves its directory"),
        ([(member("/etc/x"), b"x")], "absolute name"),
        ([(member("a", tarfile.SYMTYPE, link="/"), b""), (member("a/etc/x"), b"x")], "symlink"),
        ([(member("a", tarfile.SYMTYPE, link="../.."), b""), (member("a/x"), b"x")], "symlink"),
        ([(member("h", tarfile.LNKTYPE, link="../../agent-secret"), b"")], "leaves its directory"),
        ([(member("d", tarfile.CHRTYPE), b"")], "device or fifo"),
    ],
)
def test_hostile_tar_members_are_refused(
    root: Path, tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], why: str
) -> None:
    reply = run(call(root, "PUT", tar_of(*members), tar=True, path="/home/app", user="root"))
    assert reply.status == 400, reply.body
    assert why in json.loads(reply.body)["error"]
    assert not (root / "etc/x").exists()
    assert not (root / "home/x").exists()
    assert (tmp_path / "agent-secret").read_text() == "the agent's secret\n"


def test_an_existing_symlink_in_the_root_is_not_written_through(root: Path) -> None:
    body = tar_of((member("evil/etc/hostname"), b"overwritten\n"))
    reply = run(call(root, "PUT", body, tar=True, path="/data", user="root"))
    assert reply.status == 400, reply.body
    assert (root / "etc/hostname").read_text() == "inside\n"


def test_the_size_limit_and_missing_files_and_a_root_less_workload(root: Path) -> None:
    (root / "data/big").write_bytes(b"x" * 5000)
    assert run(call(root, "GET", path="/data/big", limit=4096)).status == 413
    assert run(call(root, "GET", path="/data", limit=4096)).status == 413
    assert run(call(root, "GET", path="/nope")).status == 404
    assert run(call(root, "GET", path="relative")).status == 400
    assert run(call(None, "GET", path="/etc/hostname")).status == 409
    assert run(call(root, "PUT", b"x", path="/data")).status == 409
    assert run(call(root, "PUT", b"not a tar", tar=True, path="/data")).status == 400
