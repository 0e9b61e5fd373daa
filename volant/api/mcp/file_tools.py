"""MCP tools for files in a VM's workload root: read_file and write_file.

Both are managing VMs (polkit manage-vms): reading can expose the workload's secrets. Text comes
back as text when it is UTF-8, else base64; write_file takes either. A file larger than max_bytes
(at most vm.files_max_mb) is refused, not cut: half a config file misleads a model.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from volant.auth.polkit import Action
from volant.engine import Engine
from volant.engine.files import MAX_PATH, FileIn
from volant.model import InvalidArgument
from volant.model.validate import DNS_LABEL

from .tooldef import Arguments, ToolDef

READ_CAP = 1024 * 1024
PATH = Field(
    min_length=1, max_length=MAX_PATH, description="Absolute path in the workload's own root"
)


class ReadFile(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name")
    path: StrictStr = PATH
    max_bytes: StrictInt = Field(
        65536, ge=1, le=READ_CAP, description="Refuse a file larger than this many bytes"
    )


class WriteFile(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name")
    path: StrictStr = PATH
    content: StrictStr = Field(max_length=4 * READ_CAP, description="The file's new content")
    encoding: Literal["text", "base64"] = Field("text", description="How content is given")
    mode: StrictStr | None = Field(
        None, pattern="^[0-7]{3,4}$", description="Permission bits in octal, e.g. 0755"
    )
    user: StrictStr | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Who writes and owns it (a user of the image); default: the workload's user",
    )


async def read_file(engine: Engine, args: ReadFile) -> dict[str, Any]:
    limit = min(args.max_bytes, engine.files.limit)
    data = await engine.files.read_bytes(args.name, args.path, limit)
    try:
        return {"path": args.path, "encoding": "text", "content": data.decode("utf-8"),
                "size": len(data)}  # fmt: skip
    except UnicodeDecodeError:
        return {"path": args.path, "encoding": "base64", "size": len(data),
                "content": base64.b64encode(data).decode()}  # fmt: skip


async def write_file(engine: Engine, args: WriteFile) -> dict[str, Any]:
    if args.encoding == "base64":
        try:
            data = base64.b64decode(args.content, validate=True)
        except binascii.Error as exc:
            raise InvalidArgument(f"content is not base64: {exc}", field="content") from exc
    else:
        data = args.content.encode()
    target = FileIn(
        path=args.path,
        user=args.user or "",
        mode=int(args.mode, 8) if args.mode is not None else None,
    )
    return await engine.files.write_bytes(args.name, target, data)


FILE_TOOLS: tuple[ToolDef[Any], ...] = (
    ToolDef(
        name="read_file",
        title="Read a file in a VM",
        description="Read a regular file from a running VM's workload root: "
        "UTF-8 text as text, anything else base64. Refused beyond max_bytes.",
        arguments=ReadFile,
        run=read_file,
        action=Action.MANAGE_VMS,
        read_only=True,
    ),
    ToolDef(
        name="write_file",
        title="Write a file in a VM",
        description="Write (replace) a file in a running VM's workload root, making missing "
        "directories; owned by the workload's user unless user says otherwise.",
        arguments=WriteFile,
        run=write_file,
        action=Action.MANAGE_VMS,
        destructive=True,
    ),
)
