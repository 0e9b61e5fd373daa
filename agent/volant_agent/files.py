"""GET and PUT /v1/files: a file or a directory (tar) out of, or into, the workload's root.

The file system work happens in a child (volant_agent.filework) chrooted into the root, so the
workload's symlinks and `..` resolve inside it whatever they say. Only rootfs plugins have a root
of their own: an initramfs plugin's workload shares the agent's root, where the agent's code and
config live, so it gets 409.

Query: path (absolute); for PUT also user (who writes and owns what is written: the workload's
user by default, or a name or uid[:gid] of the image), mode (octal, a file's permission bits) and
mtime (seconds). GET also takes limit (bytes; 413 when the file or directory holds more). A PUT
body is a file's bytes, or a tar when Content-Type is application/x-tar; it is streamed into the
child as it arrives (the route reads it itself, past the server's 1 MiB bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from volant_agent.http import HTTPError, Request, Response, error_response, json_response
from volant_agent.users import ROOT, Identity, UserError, resolve_user

if TYPE_CHECKING:
    from volant_agent.app import Agent

TAR = "application/x-tar"
BLOCK = 1 << 16
# A body that stalls this long is abandoned.
IDLE = 60.0
PATH = "/v1/files"
# Where volant_agent is installed: the worker imports it from there.
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def streams_files(path: str) -> bool:
    """True for /v1/files: a PUT's body streams into the worker (see http.read_request)."""
    return path == PATH


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.query).items()}


def _path(query: dict[str, str]) -> str:
    path = query.get("path", "")
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise HTTPError(400, "path must be an absolute path in the workload's root")
    return path


def _number(query: dict[str, str], name: str, base: int = 10) -> int | None:
    if name not in query:
        return None
    try:
        return int(query[name], base)
    except ValueError as exc:
        raise HTTPError(400, f"{name} must be a number") from exc


def _root(agent: Agent) -> str:
    """The workload's root: a rootfs plugin's, or the view of an initramfs plugin's."""
    supervisor = agent.supervisor
    root = supervisor.root if supervisor is not None else None
    root = root or agent.files_root
    if supervisor is None or root is None:
        raise HTTPError(409, "the workload has no root for files (no workload, or its root "
                             "is not ready)")  # fmt: skip
    return str(root)


def _writer(agent: Agent, root: str, spec: str | None) -> Identity:
    if spec:
        try:
            return resolve_user(spec, Path(root))
        except UserError as exc:
            raise HTTPError(400, str(exc)) from exc
    supervisor = agent.supervisor
    return supervisor.identity if supervisor and supervisor.identity else ROOT


async def _spawn(job: dict[str, Any], stdin: int) -> asyncio.subprocess.Process:
    # The worker imports this very package, wherever it is installed.
    env = {**os.environ, "PYTHONPATH": PACKAGE_DIR}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "volant_agent.filework", json.dumps(job),
        stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


def _failure(doc: object) -> Response | None:
    if isinstance(doc, dict) and "error" in doc:
        return error_response(int(doc.get("status", 500)), str(doc["error"]))
    if not isinstance(doc, dict):
        return error_response(500, "the file worker said nothing")
    return None


async def get_files(agent: Agent, request: Request) -> Response:
    """A regular file's bytes, or a tar of a directory."""
    query = _query(request)
    job = {"op": "read", "root": _root(agent), "path": _path(query),
           "limit": _number(query, "limit") or 0}  # fmt: skip
    proc = await _spawn(job, asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), IDLE)
        doc = json.loads(line) if line else None
    except (TimeoutError, ValueError):
        doc = None
    failed = _failure(doc)
    if failed is not None:
        await _reap(proc)
        return failed
    assert isinstance(doc, dict)
    headers = {"X-Volant-File-Mode": format(doc.get("mode", 0o644), "04o")}
    if doc["kind"] == "file":
        headers |= {"Content-Type": "application/octet-stream",
                    "X-Volant-File-Size": str(doc["size"]),
                    "X-Volant-File-Mtime": repr(doc["mtime"])}  # fmt: skip
    else:
        headers["Content-Type"] = TAR
    stdout = proc.stdout

    async def stream(writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await asyncio.wait_for(stdout.read(BLOCK), IDLE):
                writer.write(chunk)
                await writer.drain()
        finally:
            await _reap(proc)

    return Response(200, headers=headers, stream=stream)


async def put_files(agent: Agent, request: Request) -> Response:
    """Write a file, or unpack a tar, at path as the writer; the body streams into the worker."""
    query = _query(request)
    root = _root(agent)
    who = _writer(agent, root, query.get("user"))
    kind = "tar" if request.headers.get("content-type", "").startswith(TAR) else "file"
    mtime = query.get("mtime")
    try:
        stamp = float(mtime) if mtime is not None else None
    except ValueError as exc:
        raise HTTPError(400, "mtime must be a number of seconds") from exc
    job = {"op": "write", "root": root, "path": _path(query), "kind": kind, "uid": who.uid,
           "gid": who.gid, "groups": list(who.groups), "mode": _number(query, "mode", 8),
           "mtime": stamp}  # fmt: skip
    length = _length(request)
    proc = await _spawn(job, asyncio.subprocess.PIPE)
    try:
        await _feed(request, proc, length)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), IDLE)
        await asyncio.wait_for(proc.wait(), IDLE)
    except (TimeoutError, ConnectionError) as exc:
        await _reap(proc)
        raise HTTPError(400, f"the upload did not arrive whole: {exc or 'timed out'}") from exc
    try:
        doc = json.loads(line) if line else None
    except ValueError:
        doc = None
    return _failure(doc) or json_response(doc, 201)


def _length(request: Request) -> int:
    """The body's Content-Length: the host always sends one (411 without)."""
    if "transfer-encoding" in request.headers or "content-length" not in request.headers:
        raise HTTPError(411, "send the body with a Content-Length")
    try:
        length = int(request.headers["content-length"])
    except ValueError as exc:
        raise HTTPError(400, "bad Content-Length") from exc
    if length < 0:
        raise HTTPError(400, "bad Content-Length")
    return length


async def _feed(request: Request, proc: asyncio.subprocess.Process, length: int) -> None:
    """Copy the request body (length bytes) into the worker's stdin."""
    assert proc.stdin is not None
    assert request.reader is not None
    left = length
    try:
        while left > 0:
            chunk = await asyncio.wait_for(request.reader.read(min(BLOCK, left)), IDLE)
            if not chunk:
                raise ConnectionError("the body ended before Content-Length")
            left -= len(chunk)
            proc.stdin.write(chunk)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker gave up early (a bad member): its answer says why
    finally:
        proc.stdin.close()
