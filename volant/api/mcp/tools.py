"""MCP tools: one engine verb each, with a JSON Schema the arguments are validated against.

What an agent needs to run VMs and find out why one misbehaves: the VM verbs, the plugins
(their manifests are resources), a plugin's actions, the workload's output, the serial console,
the event log and the host's status. The streams (log follow, events, console) are REST's.

A tool decodes its arguments (pydantic, strict like the REST bodies), makes one engine call
and answers JSON, both as structured content and as text for clients that read only text.
A VolantError becomes a tool error result carrying its stable code, so the model sees what
went wrong and can correct itself; it never becomes a protocol error or a crash.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from mcp import types
from pydantic import Field, JsonValue, StrictBool, StrictInt, StrictStr

from volant.auth.polkit import Action
from volant.engine import Engine
from volant.engine.console import MAX_LOG_LINES
from volant.model import (
    EventType,
    VMQuery,
    VMSpec,
    VMStatus,
    VolantError,
    VolumeMount,
    mappings_from,
)
from volant.model.publish import PUBLISH_PATTERN, PUBLISH_RULE
from volant.model.validate import DNS_LABEL
from volant.model.volumes import VOLUME_NAME_PATTERN
from volant.plugins.schema import ACTION_NAME

from .exec_tools import EXEC_TOOLS
from .file_tools import FILE_TOOLS
from .operation_tools import OPERATION_TOOLS
from .tooldef import (
    A,
    Arguments,
    Authorize,
    ToolDef,
    guest_reply,
    inline_refs,
    parse_arguments,
)
from .volume_tools import VOLUME_TOOLS

__all__ = [
    "A",
    "TOOLS",
    "Arguments",
    "Authorize",
    "ToolDef",
    "guest_reply",
    "inline_refs",
    "parse_arguments",
]


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


class VolumeArgument(Arguments):
    name: StrictStr = Field(pattern=VOLUME_NAME_PATTERN, description="An existing volume")
    path: StrictStr = Field(pattern="^/", description="Absolute path the guest mounts it at")
    read_only: StrictBool = Field(False, description="Mount it read-only")


class CreateVM(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    plugin: StrictStr = Field(pattern=DNS_LABEL, description="Installed plugin to run")
    cpu_cores: StrictInt | None = Field(None, ge=1, description="vCPUs (default: the plugin's)")
    memory_mb: StrictInt | None = Field(None, ge=1, description="RAM in MiB (default: plugin's)")
    kernel_args: StrictStr = Field("", description="Extra kernel command line arguments")
    isolated: StrictBool = Field(
        False, description="Cut the VM off from every other guest (it still reaches the host)"
    )
    ephemeral: StrictBool = Field(
        False, description="A rootfs plugin's VM writes to a tmpfs, lost at stop, not a disk"
    )
    volumes: list[VolumeArgument] = Field(
        [], max_length=16, description="Volumes to mount in the guest (create_volume makes one)"
    )
    publish: list[Annotated[StrictStr, Field(pattern=PUBLISH_PATTERN)]] | None = Field(
        None,
        max_length=64,
        description=f"Host ports forwarded to the VM while it runs, each {PUBLISH_RULE} "
        "(default: the plugin's network.publish; [] publishes none)",
    )


class CallAction(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    action: StrictStr = Field(
        pattern=ACTION_NAME, description="One of the actions its plugin's manifest declares"
    )
    input: JsonValue = Field(
        None, description="Sent to the action as its JSON body; null (the default): no body"
    )


class VMLogs(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    limit: StrictInt = Field(200, ge=1, le=10_000, description="At most this many recent lines")


class ConsoleLog(Arguments):
    name: StrictStr = Field(pattern=DNS_LABEL, description="VM name (a DNS label)")
    lines: StrictInt = Field(100, ge=1, le=MAX_LOG_LINES, description="The last this many lines")


class ListEvents(Arguments):
    after: StrictInt = Field(0, ge=0, le=2**63 - 1, description="Only events with a larger id")
    limit: StrictInt = Field(100, ge=1, le=10_000, description="At most this many events")
    vm: StrictStr | None = Field(None, pattern=DNS_LABEL, description="Only this VM's events")
    types: list[EventType] = Field([], description="Only events of these types")


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
    volumes = [v.to_dict() for v in await engine.volumes.vm_volumes(vm.name)]
    return {**vm.to_dict(), "usage": usage.to_dict(), "volumes": volumes}


async def create_vm(engine: Engine, args: CreateVM) -> dict[str, Any]:
    spec = VMSpec(
        name=args.name,
        plugin=args.plugin,
        cpu_cores=args.cpu_cores,
        memory_mb=args.memory_mb,
        kernel_args=args.kernel_args,
        isolated=args.isolated,
        ephemeral=args.ephemeral,
        volumes=tuple(VolumeMount(v.name, v.path, v.read_only) for v in args.volumes),
        publish=None if args.publish is None else mappings_from(args.publish),
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


async def list_builds(engine: Engine, _args: NoArguments) -> dict[str, Any]:
    return {"builds": [b.to_dict() for b in engine.builds.list_builds()]}


async def call_action(engine: Engine, args: CallAction) -> dict[str, Any]:
    body = b"" if args.input is None else json.dumps(args.input).encode()
    content_type = "" if args.input is None else "application/json"
    reply = await engine.call_action(args.name, args.action, body=body, content_type=content_type)
    return guest_reply(reply)


async def vm_logs(engine: Engine, args: VMLogs) -> dict[str, Any]:
    return {"lines": await engine.vm_recent_logs(args.name, args.limit)}


async def console_log(engine: Engine, args: ConsoleLog) -> dict[str, Any]:
    data = await engine.console_log(args.name, args.lines)
    return {"text": data.decode(errors="replace")}


async def list_events(engine: Engine, args: ListEvents) -> dict[str, Any]:
    events = await engine.list_events(args.after, args.limit, vm=args.vm, types=args.types)
    return {"events": [event.to_dict() for event in events]}


async def system_status(engine: Engine, _args: NoArguments) -> dict[str, Any]:
    return asdict(await engine.system_status())


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
    ToolDef(
        name="list_builds",
        title="List plugin builds",
        description="Plugin builds from OCI images under way or recently finished: state, "
        "step, progress (0 to 1) and, for a failed one, why.",
        arguments=NoArguments,
        run=list_builds,
    ),
    ToolDef(
        name="call_action",
        title="Call a plugin action",
        description="Run one of the actions the VM's plugin declares (list_plugins, or its "
        "manifest resource, names them) and answer the workload's HTTP reply: status, and its "
        "body as json, text or base64. A status of 400 or more is the workload's own answer.",
        arguments=CallAction,
        run=call_action,
        action=Action.MANAGE_VMS,
        # An action may change anything inside the workload; nothing says it may be repeated.
        destructive=True,
        idempotent=False,
    ),
    ToolDef(
        name="vm_logs",
        title="Workload output",
        description="The most recent stdout and stderr lines of the VM's workload, oldest "
        "first, from the agent in the guest (VMs of plugins with a workload only).",
        arguments=VMLogs,
        run=vm_logs,
    ),
    ToolDef(
        name="console_log",
        title="Serial console log",
        description="The last lines the VM printed on its serial console, over all its boots: "
        "the kernel's and the guest's own messages. Where to look when a VM ends in error.",
        arguments=ConsoleLog,
        run=console_log,
        # Guests print secrets on their console too: reading it is managing the VM.
        action=Action.MANAGE_VMS,
        read_only=True,
    ),
    ToolDef(
        name="list_events",
        title="List events",
        description="What happened to VMs (created, starting, running, stopped, crashed, "
        "deleted, ...), oldest first, from the persisted event log.",
        arguments=ListEvents,
        run=list_events,
    ),
    ToolDef(
        name="system_status",
        title="Host status",
        description="volantd's version and hypervisor, VMs by status, the address pool, and "
        "the host's CPUs, load and available memory: what room there is for new VMs.",
        arguments=NoArguments,
        run=system_status,
    ),
    *VOLUME_TOOLS,
    *FILE_TOOLS,
    *EXEC_TOOLS,
    *OPERATION_TOOLS,
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
