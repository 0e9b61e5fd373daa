"""REST routes that run a command in a VM's workload: one JSON request, and a WebSocket.

`POST /api/v1/vms/{name}/exec` takes {argv, env, workdir, user, timeout, stdin or stdin_base64,
stream}. Without stream it answers when the command has ended: {exit_code, signal, timed_out,
error, stdout, stderr, truncated}, each stream kept up to `exec.max_output_kb` (UTF-8, bad bytes
replaced). With stream it answers application/x-ndjson as output comes: {"stream": "stdout" or
"stderr", "data": base64} lines, then {"exit_code", "signal", "timed_out", "error"}.

`GET /ws/v1/vms/{name}/exec` is the interactive form (`volar vms exec -it`). The client's first
message is a text frame with the command as JSON: {argv, env, workdir, user, timeout, tty, rows,
cols}. Then the client sends binary frames (stdin) and text frames {"type": "eof"},
{"type": "resize", "rows", "cols"}, {"type": "signal", "signal": "INT"}; volantd sends binary
frames whose first byte is the stream (1 stdout, 2 stderr) and the rest its bytes, and at the end
a text frame {"type": "exit", exit_code, signal, timed_out, error} and close 1000. A command that
cannot start is a text frame {"type": "error", status, code, detail, hint, field} and close
4000. Both need manage-vms (polkit) over the unix socket, or the API key over TCP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import pwd
from typing import Annotated, Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from volant.engine.agentports import ExecLink
from volant.model import InvalidArgument, VolantError
from volant.model.execs import MAX_ARGV, MAX_TIMEOUT, ExecSpec

from .common import engine_of, read_json
from .console import HEARTBEAT, MAX_INPUT, SOCKETS, same_origin
from .peer import authorize, unix_peer
from .replies import Reply
from .schemas import parse_body
from .spec import Api, Body

TAG = "vms"
NDJSON = "application/x-ndjson"
CHANNELS = {"stdout": b"\x01", "stderr": b"\x02"}
CANNOT_START = 4000


# Documented so that generated requests (schemathesis) stay within what the engine accepts.
Arg = Annotated[StrictStr, Field(pattern=r"^[^\x00]*$")]
EnvName = Annotated[StrictStr, Field(pattern=r"^[^=\x00]+$")]


BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class ExecBase(BaseModel):
    """What both forms take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: list[Arg] = Field(
        min_length=1,
        max_length=MAX_ARGV,
        description="The command: its name first (not empty), then its arguments",
        json_schema_extra={"prefixItems": [{"type": "string", "minLength": 1}]},
    )
    env: dict[EnvName, Arg] = Field(
        default_factory=dict,
        description="Variables over the workload's environment",
        json_schema_extra={"additionalProperties": False},
    )
    workdir: StrictStr = Field(
        "",
        pattern=r"^(/[^\x00]*)?$",
        description="Directory in the workload's root (default: the workload's, else the "
        "user's home)",
    )
    user: StrictStr = Field("", description="User in the image (default: the workload's)")
    timeout: float = Field(0, ge=0, le=MAX_TIMEOUT, description="Seconds, then the command is "
                           "killed and exits 124; 0: no limit")  # fmt: skip

    def spec(self, tty: bool = False, rows: int = 24, cols: int = 80) -> ExecSpec:
        return ExecSpec(tuple(self.argv), dict(self.env), self.workdir, self.user,
                        float(self.timeout), tty, rows, cols)  # fmt: skip


class ExecCommand(ExecBase):
    """The WebSocket's first message."""

    tty: StrictBool = Field(False, description="Run it on a pty")
    rows: int = Field(24, ge=1, le=65535, description="The pty's rows")
    cols: int = Field(80, ge=1, le=65535, description="The pty's columns")


class ExecRequest(ExecBase):
    """POST /api/v1/vms/{name}/exec."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "not": {
                "required": ["stdin", "stdin_base64"],
                "properties": {"stdin": {"type": "string"}, "stdin_base64": {"type": "string"}},
            }
        },
    )

    stdin: StrictStr | None = Field(None, description="Input, as text")
    stdin_base64: StrictStr | None = Field(
        None, pattern=BASE64, description="Input, base64 (instead of stdin)"
    )
    stream: StrictBool = Field(False, description="Answer NDJSON lines as output comes")

    def input(self) -> bytes:
        if self.stdin is not None and self.stdin_base64 is not None:
            raise InvalidArgument("give stdin or stdin_base64, not both", field="stdin")
        if self.stdin_base64 is None:
            return (self.stdin or "").encode()
        try:
            return base64.b64decode(self.stdin_base64, validate=True)
        except binascii.Error as exc:
            raise InvalidArgument(f"stdin_base64: {exc}", field="stdin_base64") from exc


class ExecResult(Reply):
    exit_code: int = Field(description="128+N: signal N; 124 timed out; 127 not found")
    signal: str | None = Field(description="The signal that ended it")
    timed_out: bool
    error: str | None = Field(description="Why it never ran, when so")
    stdout: str
    stderr: str
    truncated: bool = Field(description="Output beyond exec.max_output_kb per stream was cut")
    output_limit_bytes: int


def caller_of(request: web.Request) -> str:
    """Who asks, for the VM_EXEC event: `uid N (name)` over the unix socket, else `api-key`."""
    peer = unix_peer(request)
    if peer is None:
        return "api-key" if engine_of(request).config.api_key else "tcp"
    with contextlib.suppress(KeyError):
        return f"uid {peer.uid} ({pwd.getpwuid(peer.uid).pw_name})"
    return f"uid {peer.uid}"


async def exec_command(request: web.Request) -> web.StreamResponse:
    """Run a command in the VM's workload; its output whole (capped) or as NDJSON lines."""
    await authorize(request)  # root's power in the guest
    body = parse_body(ExecRequest, await read_json(request))
    name, engine = request.match_info["name"], engine_of(request)
    if not body.stream:
        out = await engine.execs.run(name, body.spec(), caller_of(request), stdin=body.input())
        return web.json_response(
            {
                **out.end.to_dict(),
                "stdout": out.stdout.decode(errors="replace"),
                "stderr": out.stderr.decode(errors="replace"),
                "truncated": out.truncated,
                "output_limit_bytes": engine.config.exec_max_output_kb * 1024,
            }
        )
    async with engine.execs.session(name, body.spec(), caller_of(request)) as link:
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        await link.send_stdin(body.input())
        await link.close_stdin()
        while (chunk := await link.receive()) is not None:
            line = {"stream": chunk[0], "data": base64.b64encode(chunk[1]).decode()}
            await response.write(json.dumps(line).encode() + b"\n")
        end = link.end
        last = end.to_dict() if end else {"error": "the guest went away", "exit_code": None}
        await response.write(json.dumps(last).encode() + b"\n")
        await response.write_eof()
    return response


async def exec_socket(request: web.Request) -> web.StreamResponse:
    """The interactive form; errors before the upgrade are problem+json."""
    await authorize(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_INPUT)
    if not ws.can_prepare(request).ok:
        raise InvalidArgument("exec here is a WebSocket: send a GET with Upgrade: websocket",
                              hint="`volar vms exec -it NAME -- sh`")  # fmt: skip
    same_origin(request)  # a browser page of another origin must not get a root shell
    name, engine = request.match_info["name"], engine_of(request)
    await engine.execs.ready(name)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)  # closed (1001) when volantd stops, like consoles
    try:
        first = await ws.receive(timeout=30)
        if first.type is not WSMsgType.TEXT:
            raise InvalidArgument("the first message must be the command as JSON text")
        try:
            command = parse_body(ExecCommand, json.loads(first.data))
        except ValueError as exc:
            raise InvalidArgument(f"the first message is not JSON: {exc}") from exc
        spec = command.spec(command.tty, command.rows, command.cols)
        async with engine.execs.session(name, spec, caller_of(request)) as link:
            await _bridge(ws, link)
            end = link.end
        if not ws.closed:
            last = end.to_dict() if end else {"error": "the guest went away", "exit_code": None}
            await ws.send_str(json.dumps({"type": "exit", **last}))
            await ws.close()
    except VolantError as exc:
        wire = exc.wire
        doc = {"type": "error", "status": wire.http_status, "code": exc.code.value,
               "detail": exc.message, "hint": exc.hint, "field": exc.field}  # fmt: skip
        if not ws.closed:
            await ws.send_str(json.dumps(doc))
            await ws.close(code=CANNOT_START, message=b"the command could not start")
    except TimeoutError:
        await ws.close(code=CANNOT_START, message=b"no command sent")
    finally:
        request.app[SOCKETS].discard(ws)
    return ws


async def _bridge(ws: web.WebSocketResponse, link: ExecLink) -> None:
    """Client input to the command and its output to the client, until it ends (or the client
    leaves: then the command is killed)."""
    to_guest = asyncio.create_task(_to_guest(ws, link))
    try:
        while (chunk := await link.receive()) is not None:
            with contextlib.suppress(ConnectionResetError):
                await ws.send_bytes(CHANNELS[chunk[0]] + chunk[1])
    finally:
        to_guest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await to_guest


async def _to_guest(ws: web.WebSocketResponse, link: ExecLink) -> None:
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            await link.send_stdin(message.data)
        elif message.type is WSMsgType.TEXT:
            await _control(link, message.data)
    await link.close()  # the client left: hang up, and the agent kills the command


async def _control(link: ExecLink, text: str) -> None:
    try:
        doc: Any = json.loads(text)
        kind = doc.get("type")
        if kind == "eof":
            await link.close_stdin()
        elif kind == "resize":
            await link.resize(int(doc["rows"]), int(doc["cols"]))
        elif kind == "signal":
            await link.signal(str(doc["signal"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        pass  # a control message this version does not know: ignored, like an unknown key


def add_routes(api: Api) -> None:
    api.add(
        "POST",
        "/api/v1/vms/{name}/exec",
        exec_command,
        summary="Run a command in a VM's workload (its root, as its user)",
        tag=TAG,
        body=ExecRequest,
        stream=True,  # the command's own timeout bounds it, not api.request_timeout
        ok={
            200: (
                "The command ended (exit_code says how); with stream, NDJSON lines of output "
                "({stream, data: base64}) and a last one with exit_code",
                (Body(ExecResult), Body(media=NDJSON, schema={"type": "string"})),
            )
        },
        errors=(400, 404, 409, 503),
    )
    api.add(
        "GET",
        "/ws/v1/vms/{name}/exec",
        exec_socket,
        summary="Run a command in a VM's workload interactively, a pty if asked (WebSocket)",
        tag=TAG,
        stream=True,
        ok={
            101: (
                "Switching to WebSocket. First client message: the command as JSON text "
                "{argv, env, workdir, user, timeout, tty, rows, cols}. Then client binary = "
                'stdin; client text {"type": "eof" | "resize" (rows, cols) | "signal" '
                "(signal)}; server binary = a stream byte (1 stdout, 2 stderr) and its bytes; "
                'server text {"type": "exit", exit_code, signal, timed_out, error} then close '
                '1000, or {"type": "error", status, code, detail, hint} then close 4000',
                None,
            )
        },
        errors=(404, 409, 503),
    )
