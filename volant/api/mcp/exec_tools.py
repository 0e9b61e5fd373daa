"""The MCP tool that runs a command in a VM's workload: what an agent inspects a workload with.

The command runs in the workload's root as its user (or `user`), like `volar vms exec`; it is
root's power in the guest, so the tool needs manage-vms and is marked destructive. It always
has a timeout (the tool call must end within api.request_timeout) and its output is capped:
at `max_output_bytes` per stream, at most `exec.max_output_kb`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictInt, StrictStr

from volant.auth.polkit import Action
from volant.engine import Engine
from volant.model.execs import MAX_ARGV, ExecSpec
from volant.model.validate import DNS_LABEL

from .tooldef import Arguments, ToolDef

MAX_TOOL_TIMEOUT = 240


class ExecCommand(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    argv: list[StrictStr] = Field(
        min_length=1, max_length=MAX_ARGV, description='The command, e.g. ["ls", "-l", "/"]'
    )
    env: dict[StrictStr, StrictStr] = Field(
        default_factory=dict, description="Variables over the workload's environment"
    )
    workdir: StrictStr = Field("", description="Directory (default: the workload's)")
    user: StrictStr = Field("", description="User in the image (default: the workload's)")
    stdin: StrictStr = Field("", description="Input for the command, as text")
    timeout: StrictInt = Field(
        60, ge=1, le=MAX_TOOL_TIMEOUT, description="Seconds; then it is killed (exit code 124)"
    )
    max_output_bytes: StrictInt = Field(
        64 * 1024, ge=1, description="Keep at most this much of stdout and of stderr each"
    )


async def exec_command(engine: Engine, args: ExecCommand, caller: str) -> dict[str, Any]:
    spec = ExecSpec(tuple(args.argv), dict(args.env), args.workdir, args.user, float(args.timeout))
    out = await engine.execs.run(args.name, spec, caller, stdin=args.stdin.encode())
    cap = min(args.max_output_bytes, engine.config.exec_max_output_kb * 1024)
    truncated = out.truncated or len(out.stdout) > cap or len(out.stderr) > cap
    return {
        **out.end.to_dict(),
        "stdout": out.stdout[:cap].decode(errors="replace"),
        "stderr": out.stderr[:cap].decode(errors="replace"),
        "truncated": truncated,
    }


EXEC_TOOLS: tuple[ToolDef[Any], ...] = (
    ToolDef(
        name="exec_command",
        title="Run a command in a VM",
        description="Run a command in a running VM's workload (its root filesystem, as its "
        "user) and get exit_code, stdout and stderr (capped: truncated says so). exit_code 124: "
        "the timeout killed it; 127: no such command. Root's power inside the guest.",
        arguments=ExecCommand,
        run=lambda engine, args: exec_command(engine, args, "mcp"),
        run_as=exec_command,
        action=Action.MANAGE_VMS,
        destructive=True,
        idempotent=False,
    ),
)
