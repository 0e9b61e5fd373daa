"""MCP tools for the workload's own HTTP API, as its OpenAPI document declares it.

An agent lists the operations, then calls one by its operationId (or METHOD:/path) through the
VM's passthrough; the answer comes back like call_action's. No raw proxy tool: the document
names what the workload offers, and a WebSocket is no tool call.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, JsonValue, StrictStr

from volant.auth.polkit import Action
from volant.engine import Engine
from volant.model.validate import DNS_LABEL

from .tooldef import Arguments, ToolDef, guest_reply


class ListOperations(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")


class CallOperation(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    operation: StrictStr = Field(
        min_length=1,
        description="An operation's key from list_operations (operationId, or "
        "METHOD:/path when the document gives none)",
    )
    params: dict[str, StrictStr] = Field(
        default_factory=dict, description="Path parameters: each {name} of the operation's path"
    )
    query: dict[str, StrictStr] = Field(default_factory=dict, description="Query parameters")
    input: JsonValue = Field(None, description="JSON request body; null (the default): none")


async def list_operations(engine: Engine, args: ListOperations) -> dict[str, Any]:
    operations = await engine.passthrough.operations(args.name)
    return {"operations": [op.to_dict() for op in operations]}


async def call_operation(engine: Engine, args: CallOperation) -> dict[str, Any]:
    answer = await engine.passthrough.call_operation(
        args.name,
        args.operation,
        params=args.params,
        query=list(args.query.items()),
        body=args.input,
    )
    return guest_reply(answer) | {"truncated": answer.truncated}


OPERATION_TOOLS: tuple[ToolDef[Any], ...] = (
    ToolDef(
        name="list_operations",
        title="List a workload's operations",
        description="The operations the OpenAPI document of the VM's workload declares: key "
        "(what call_operation takes), method, path, path parameters and summary.",
        arguments=ListOperations,
        run=list_operations,
    ),
    ToolDef(
        name="call_operation",
        title="Call a workload's operation",
        description="Call one operation of the VM workload's own HTTP API (list_operations "
        "names them) and answer its reply: status, and its body as json, text or base64 (at "
        "most 1 MiB; truncated says when cut). A status of 400 or more is the workload's own.",
        arguments=CallOperation,
        run=call_operation,
        action=Action.MANAGE_VMS,
        # An operation may change anything inside the workload; nothing says it may be repeated.
        destructive=True,
        idempotent=False,
    ),
)
