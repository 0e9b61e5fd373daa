"""MCP tools: one engine verb each, with a JSON Schema the arguments are validated against.

A tool decodes its arguments (pydantic, strict like the REST bodies), makes one engine call
and answers JSON, both as structured content and as text for clients that read only text.
A VolantError becomes a tool error result carrying its stable code, so the model sees what
went wrong and can correct itself; it never becomes a protocol error or a crash.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mcp import types
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from volant.api.validation import validate_model
from volant.auth.polkit import Action
from volant.engine import Engine
from volant.model import VMQuery, VMSpec, VMStatus, VolantError
from volant.model.validate import DNS_LABEL

A = TypeVar("A", bound=BaseModel)
Authorize = Callable[[Action], Awaitable[None]]


class Arguments(BaseModel):
    """Tool arguments: unknown keys and loosely typed values are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArguments(Arguments):
    pass


class VMName(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")


class ListVMs(Arguments):
    status: VMStatus | None = Field(None, description="Only VMs in this status")
    plugin: StrictStr | None = Field(None, max_length=63, description="Only VMs of this plugin")
    prefix: StrictStr = Field("", max_length=63, description="Only VMs whose name starts so")
    limit: StrictInt | None = Field(None, ge=1, le=10_000, description="At most this many VMs")
    offset: StrictInt = Field(0, ge=0, le=1_000_000, description="Skip this many matches first")


class CreateVM(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    plugin: StrictStr = Field(pattern=DNS_LABEL, description="Installed plugin to run")
    cpu_cores: StrictInt | None = Field(None, ge=1, description="vCPUs (default: the plugin's)")
    memory_mb: StrictInt | None = Field(None, ge=1, description="RAM in MiB (default: plugin's)")
    kernel_args: StrictStr = Field("", description="Extra kernel command line arguments")


async def list_vms(engine: Engine, args: ListVMs) -> dict[str, Any]:
    query = VMQuery(
        status=args.status,
        plugin=args.plugin,
        prefix=args.prefix,
        limit=args.limit,
        offset=args.offset,
    )
    vms, total = await engine.query_vms(query)
    return {"vms": [vm.to_dict() for vm in vms], "total": total}


async def get_vm(engine: Engine, args: VMName) -> dict[str, Any]:
    vm = await engine.get_vm(args.name)
    usage = await engine.vm_usage(vm.name)
    return {**vm.to_dict(), "usage": usage.to_dict()}


async def create_vm(engine: Engine, args: CreateVM) -> dict[str, Any]:
    spec = VMSpec(
        name=args.name,
        plugin=args.plugin,
        cpu_cores=args.cpu_cores,
        memory_mb=args.memory_mb,
        kernel_args=args.kernel_args,
    )
    return (await engine.create_vm(spec)).to_dict()


async def delete_vm(engine: Engine, args: VMName) -> dict[str, Any]:
    await engine.delete_vm(args.name)
    return {"deleted": args.name}


async def start_vm(engine: Engine, args: VMName) -> dict[str, Any]:
    return (await engine.start_vm(args.name)).to_dict()


async def stop_vm(engine: Engine, args: VMName) -> dict[str, Any]:
    return (await engine.stop_vm(args.name)).to_dict()


async def restart_vm(engine: Engine, args: VMName) -> dict[str, Any]:
    return (await engine.restart_vm(args.name)).to_dict()


async def list_plugins(engine: Engine, _args: NoArguments) -> dict[str, Any]:
    plugins = await engine.list_plugins()
    return {"plugins": [p.to_dict() for p in plugins], "total": len(plugins)}


@dataclass(frozen=True)
class ToolDef(Generic[A]):
    """One tool: its name and description for the model, its arguments and its engine call.

    `action` is the polkit action a unix-socket caller needs (None: reading, open to all);
    TCP callers were already judged by the API key before the MCP request was read.
    """

    name: str
    title: str
    description: str
    arguments: type[A]
    run: Callable[[Engine, A], Awaitable[dict[str, Any]]]
    action: Action | None = None
    destructive: bool = False
    idempotent: bool = True

    def describe(self) -> types.Tool:
        schema = inline_refs(self.arguments.model_json_schema())
        schema.pop("title", None)
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=schema,
            annotations=types.ToolAnnotations(
                title=self.title,
                read_only_hint=self.action is None,
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                open_world_hint=False,
            ),
        )

    async def call(
        self, engine: Engine, arguments: Mapping[str, Any], authorize: Authorize
    ) -> dict[str, Any]:
        """Authorise, decode, run; raises VolantError."""
        if self.action is not None:
            await authorize(self.action)
        return await self.run(engine, parse_arguments(self.arguments, arguments))


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` written out where they are used: some MCP clients hand tool
    schemas to models that do not follow `$ref`. (The argument models are not recursive.)"""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**walk(defs[ref.removeprefix("#/$defs/")]), **walk(rest)}
        return {key: walk(value) for key, value in node.items()}

    inlined: dict[str, Any] = walk(schema)
    return inlined


def parse_arguments(model: type[A], arguments: Mapping[str, Any]) -> A:
    """Validate tool arguments; the first problem becomes an InvalidArgument naming it."""
    return validate_model(model, arguments, unknown="argument", whole="arguments")


TOOLS: tuple[ToolDef[Any], ...] = (
    ToolDef(
        name="list_vms",
        title="List VMs",
        description="VMs matching the filters, and how many match in all.",
        arguments=ListVMs,
        run=list_vms,
    ),
    ToolDef(
        name="get_vm",
        title="Get a VM",
        description="One VM: status, IP address, resources and current CPU and memory use.",
        arguments=VMName,
        run=get_vm,
    ),
    ToolDef(
        name="create_vm",
        title="Create a VM",
        description="Create a VM that runs an installed plugin, and start it. Answers once it "
        "runs, or fails having undone everything.",
        arguments=CreateVM,
        run=create_vm,
        action=Action.MANAGE_VMS,
        idempotent=False,
    ),
    ToolDef(
        name="delete_vm",
        title="Delete a VM",
        description="Stop a VM at once (no graceful shutdown) and delete it and its address.",
        arguments=VMName,
        run=delete_vm,
        action=Action.MANAGE_VMS,
        destructive=True,
    ),
    ToolDef(
        name="start_vm",
        title="Start a VM",
        description="Start a stopped VM.",
        arguments=VMName,
        run=start_vm,
        action=Action.MANAGE_VMS,
    ),
    ToolDef(
        name="stop_vm",
        title="Stop a VM",
        description="Power a running VM off gracefully; it is killed after a timeout.",
        arguments=VMName,
        run=stop_vm,
        action=Action.MANAGE_VMS,
    ),
    ToolDef(
        name="restart_vm",
        title="Restart a VM",
        description="Stop a running VM and start it again.",
        arguments=VMName,
        run=restart_vm,
        action=Action.MANAGE_VMS,
        idempotent=False,
    ),
    ToolDef(
        name="list_plugins",
        title="List plugins",
        description="Installed plugins. Each one's manifest is a resource: "
        "volant://plugins/<name>/manifest.",
        arguments=NoArguments,
        run=list_plugins,
    ),
)


def success(result: dict[str, Any]) -> types.CallToolResult:
    text = json.dumps(result, sort_keys=True)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=result)


def failure(exc: VolantError) -> types.CallToolResult:
    """A tool error result: the stable code, the message, and what to do when Volant knows."""
    error = {"code": exc.code.value, "message": exc.message}
    error |= {key: value for key, value in (("field", exc.field), ("hint", exc.hint)) if value}
    text = f"{exc.code.value}: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "")
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content={"error": error}, is_error=True
    )
