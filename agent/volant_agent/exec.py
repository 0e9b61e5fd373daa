"""Run a command in the workload's root for the host: `POST /v1/exec`, `Upgrade: volant-exec`.

The request body is a JSON object: argv (list of strings), env (object), workdir, user, tty
(bool), rows and cols (the terminal's size, with tty), timeout (seconds; 0 or absent: none).
What is wrong before the command starts is a plain HTTP answer: 400 for a malformed request, a
user the image does not know or a workdir that is not a directory; 409 while the workload's
root is not ready (or cannot be). Otherwise the agent answers `101 Switching Protocols` and the
connection carries frames both ways: one type byte, a 4-byte big-endian length, the payload.

    host -> agent   i  stdin bytes; an empty payload ends stdin
                    r  resize: JSON {"rows": R, "cols": C}
                    k  a signal for the command's process group: its name ("INT", "TERM")
    agent -> host   o  stdout bytes (with a tty: everything the terminal shows)
                    e  stderr bytes (never with a tty: the pty merges it into o)
                    x  the end: JSON {"exit_code", "signal", "timed_out", "error"}; then close

The command runs as the workload does (volant_agent.workload): chrooted into its root, as its
user (or `user`, resolved in the image's own passwd), in `workdir` (else the workload's, else
the user's home), with the workload's environment and `env` over it, in a session of its own
(with a tty, the pty is its controlling terminal). Its exit code is the shell's: 128+N when
signal N killed it, 124 when its timeout did, 127 when argv[0] is not found, 126 when it cannot
be run. It never outlives its exec: on timeout, or when the host goes away, its process group
is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volant_agent.http import HTTPError, Request, Response
from volant_agent.paths import PathError, resolve_in_root
from volant_agent.users import ROOT, Identity, UserError, resolve_user
from volant_agent.workload import DEFAULT_PATH, Health, Supervisor

UPGRADE = "volant-exec"
SWITCHING = (
    f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n"
).encode()
HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 20
CHUNK = 64 * 1024
# After the command exits: how long output its leftover children still hold open is awaited.
DRAIN = 2.0
TIMED_OUT = 124
NOT_FOUND = 127
CANNOT_RUN = 126


@dataclass(frozen=True)
class ExecRequest:
    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    tty: bool
    rows: int
    cols: int
    timeout: float


def _strings(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\0" not in k + v for k, v in value.items()
    ):
        raise HTTPError(400, f"{name} must be an object of strings")
    return dict(value)


def parse_request(body: bytes) -> ExecRequest:
    """The exec request, checked (HTTPError 400 names the field)."""
    try:
        doc: Any = json.loads(body or b"{}")
    except ValueError as exc:
        raise HTTPError(400, f"the exec request is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise HTTPError(400, "the exec request must be a JSON object")
    argv = doc.get("argv")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
        or not argv[0]
    ):
        raise HTTPError(400, "argv must be a non-empty list of strings")
    size = [doc.get("rows", 24), doc.get("cols", 80)]
    timeout = doc.get("timeout") or 0
    if not all(isinstance(n, int) and 0 < n < 65536 for n in size):
        raise HTTPError(400, "rows and cols must be integers from 1 to 65535")
    if not isinstance(timeout, int | float) or timeout < 0:
        raise HTTPError(400, "timeout must be a number of seconds, 0 for none")
    workdir, user = doc.get("workdir") or "", doc.get("user") or ""
    if not isinstance(workdir, str) or not isinstance(user, str):
        raise HTTPError(400, "workdir and user must be strings")
    if workdir and not workdir.startswith("/"):
        raise HTTPError(400, "workdir must be an absolute path")
    return ExecRequest(
        tuple(argv), _strings(doc.get("env") or {}, "env"), workdir, user,
        doc.get("tty") is True, size[0], size[1], float(timeout),
    )  # fmt: skip


@dataclass(frozen=True)
class Place:
    """Where and as whom the command runs."""

    root: Path | None
    who: Identity
    workdir: str
    env: dict[str, str]


def place(supervisor: Supervisor | None, req: ExecRequest) -> Place:
    """Root, identity, workdir and environment of the command (HTTPError when they are bad)."""
    root = supervisor.root if supervisor is not None else None
    who = (supervisor.identity if supervisor is not None else None) or ROOT
    workdir = supervisor.workload.workdir if supervisor is not None else ""
    try:
        if req.user:
            who, workdir = resolve_user(req.user, root or Path("/")), ""
    except UserError as exc:
        raise HTTPError(400, f"user: {str(exc).removeprefix('workload.user ')}") from exc
    workdir = req.workdir or workdir
    if workdir:
        if not _is_dir(root, workdir):
            raise HTTPError(400, f"workdir {workdir} is not a directory in the workload's root")
    else:
        workdir = who.home if _is_dir(root, who.home) else "/"
    env = {"PATH": DEFAULT_PATH, "HOME": who.home}
    if who.name:
        env |= {"USER": who.name, "LOGNAME": who.name}
    if supervisor is not None:
        env |= supervisor.workload.env
    if req.tty:
        env["TERM"] = "xterm"
    return Place(root, who, workdir, env | req.env)


def _is_dir(root: Path | None, path: str) -> bool:
    if path == "/":
        return True
    try:
        return (resolve_in_root(root, path) if root is not None else Path(path)).is_dir()
    except (OSError, PathError):
        return False


def _enter(where: Place, tty: bool) -> Callable[[], None]:
    """What the child runs before exec (as the workload's _enter, plus the controlling tty)."""
    root, who = where.root, where.who

    def enter() -> None:
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if root is not None:
            os.chroot(root)
        os.chdir(where.workdir)
        os.setgroups(list(who.groups))
        os.setgid(who.gid)
        os.setuid(who.uid)

    return enter


def exit_doc(code: int | None, *, timed_out: bool = False, error: str | None = None) -> bytes:
    """The x frame's payload; code is a Popen returncode (negative: killed by that signal)."""
    name = None
    if timed_out:
        exit_code = TIMED_OUT
    elif code is not None and code < 0:
        exit_code = 128 - code
        with contextlib.suppress(ValueError):
            name = signal.Signals(-code).name
    else:
        exit_code = code if code is not None else CANNOT_RUN
    doc = {"exit_code": exit_code, "signal": name, "timed_out": timed_out, "error": error}
    return json.dumps(doc, sort_keys=True).encode()


class Frames:
    """The framed connection after the 101."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, kind: bytes, payload: bytes = b"") -> None:
        # One write per frame: frames from concurrent pumps never interleave.
        self.writer.write(HEADER.pack(kind, len(payload)) + payload)
        await self.writer.drain()

    async def receive(self) -> tuple[bytes, bytes] | None:
        """The next frame, None when the host has gone (or sent garbage)."""
        try:
            kind, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            if length > MAX_FRAME:
                return None
            return kind, await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None


class Running:
    """A started command: its process, and its terminal's master side with a tty."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int | None) -> None:
        self.proc, self.master = proc, master

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def resize(self, rows: int, cols: int) -> None:
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def write(self, data: bytes) -> None:
        if self.master is not None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self.master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            return
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            if data:
                stdin.write(data)
                with contextlib.suppress(ConnectionError):
                    await stdin.drain()
            else:
                stdin.close()


async def start(req: ExecRequest, where: Place) -> Running:
    """Spawn the command (OSError when it cannot be)."""
    common: dict[str, Any] = {
        "env": where.env,
        "preexec_fn": _enter(where, req.tty),
        "start_new_session": True,
    }
    if not req.tty:
        proc = await asyncio.create_subprocess_exec(
            *req.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, **common,
        )  # fmt: skip
        return Running(proc, None)
    master, slave = os.openpty()  # not pty.openpty: the guest's stdlib has no tty.py
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", req.rows, req.cols, 0, 0))
        proc = await asyncio.create_subprocess_exec(
            *req.argv, stdin=slave, stdout=slave, stderr=slave, **common
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return Running(proc, master)


async def _pipe(stream: asyncio.StreamReader | None, kind: bytes, frames: Frames) -> None:
    while stream is not None and (data := await stream.read(CHUNK)):
        await frames.send(kind, data)


async def _terminal(master: int, frames: Frames) -> None:
    """The pty's output until every holder of its slave side has gone (EIO)."""
    loop = asyncio.get_running_loop()
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(master, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(master)
        try:
            data = os.read(master, CHUNK)
        except BlockingIOError:
            continue
        except OSError:  # EIO: the slave side is closed
            return
        if not data:
            return
        await frames.send(b"o", data)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _input(frames: Frames, running: Running) -> None:
    """Frames from the host until it goes away: then the command goes too."""
    while (frame := await frames.receive()) is not None:
        kind, payload = frame
        if kind == b"i":
            await running.write(payload)
        elif kind == b"r":
            with contextlib.suppress(ValueError, TypeError, KeyError, OSError, struct.error):
                size = json.loads(payload)
                running.resize(int(size["rows"]), int(size["cols"]))
        elif kind == b"k":
            with contextlib.suppress(KeyError):
                running.signal(signal.Signals["SIG" + payload.decode(errors="replace").upper()])
    running.signal(signal.SIGKILL)


async def converse(frames: Frames, req: ExecRequest, where: Place) -> None:
    """Run the command and relay its streams until it ends; the x frame says how."""
    try:
        running = await start(req, where)
    except FileNotFoundError:
        await frames.send(b"x", exit_doc(NOT_FOUND, error=f"command not found: {req.argv[0]}"))
        return
    except (OSError, ValueError) as exc:
        await frames.send(b"x", exit_doc(CANNOT_RUN, error=f"cannot run {req.argv[0]}: {exc}"))
        return
    proc = running.proc
    if running.master is not None:
        pumps = [asyncio.create_task(_terminal(running.master, frames))]
    else:
        pumps = [
            asyncio.create_task(_pipe(proc.stdout, b"o", frames)),
            asyncio.create_task(_pipe(proc.stderr, b"e", frames)),
        ]
    feeder = asyncio.create_task(_input(frames, running))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), req.timeout or None)
        except TimeoutError:
            timed_out = True
            running.signal(signal.SIGKILL)
            await proc.wait()
        await asyncio.wait(pumps, timeout=DRAIN)
        await frames.send(b"x", exit_doc(proc.returncode, timed_out=timed_out))
    finally:
        running.signal(signal.SIGKILL)
        for task in (*pumps, feeder):
            task.cancel()
        await asyncio.gather(*pumps, feeder, return_exceptions=True)
        if running.master is not None:
            os.close(running.master)


def ready_error(supervisor: Supervisor | None, prepared: bool) -> str | None:
    """Why a command cannot run yet (or ever) in the workload's root; None when it can."""
    if supervisor is None:
        return None
    if supervisor.health is Health.FAILED:
        return f"the workload's root or user is broken: {supervisor.error}"
    if not prepared:
        return "the workload's root is not ready yet"
    return None


async def exec_route(supervisor: Supervisor | None, prepared: bool, request: Request) -> Response:
    """POST /v1/exec: check, then take the connection over and run the command."""
    if request.headers.get("upgrade", "").lower() != UPGRADE:
        raise HTTPError(426, f"exec needs Upgrade: {UPGRADE}")
    req = parse_request(request.body)
    if (why := ready_error(supervisor, prepared)) is not None:
        raise HTTPError(409, why)
    where = place(supervisor, req)

    async def take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SWITCHING)
        await writer.drain()
        await converse(Frames(reader, writer), req, where)

    return Response(101, takeover=take_over)
