"""MCP tools for volumes: an agent that runs a database needs somewhere its data survives.

Creating, growing and deleting a volume is managing VMs (polkit manage-vms), like the VM verbs.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictStr

from volant.api.validation import Size
from volant.auth.polkit import Action
from volant.engine import Engine
from volant.model.volumes import VOLUME_NAME_PATTERN

from .tooldef import Arguments, ToolDef


class NoVolumeArguments(Arguments):
    pass


class VolumeName(Arguments):
    name: StrictStr = Field(pattern=VOLUME_NAME_PATTERN, description="Volume name")


class CreateVolume(Arguments):
    name: StrictStr = Field(
        pattern=VOLUME_NAME_PATTERN, description="Volume name: a DNS label, at most 20 characters"
    )
    size: Size


class ResizeVolume(CreateVolume):
    pass


async def list_volumes(engine: Engine, _args: NoVolumeArguments) -> dict[str, Any]:
    volumes = await engine.volumes.list_volumes()
    return {"volumes": [v.to_dict() for v in volumes], "total": len(volumes)}


async def get_volume(engine: Engine, args: VolumeName) -> dict[str, Any]:
    return (await engine.volumes.get_volume(args.name)).to_dict()


async def create_volume(engine: Engine, args: CreateVolume) -> dict[str, Any]:
    return (await engine.volumes.create_volume(args.name, args.size)).to_dict()


async def resize_volume(engine: Engine, args: ResizeVolume) -> dict[str, Any]:
    return (await engine.volumes.resize_volume(args.name, args.size)).to_dict()


async def delete_volume(engine: Engine, args: VolumeName) -> dict[str, Any]:
    await engine.volumes.delete_volume(args.name)
    return {"deleted": args.name}


VOLUME_TOOLS: tuple[ToolDef[Any], ...] = (
    ToolDef(
        name="list_volumes",
        title="List volumes",
        description="Volumes: size, host disk used, and the VMs each is attached to.",
        arguments=NoVolumeArguments,
        run=list_volumes,
    ),
    ToolDef(
        name="get_volume",
        title="Get a volume",
        description="One volume: size, host disk used, whether a VM runs with it, its VMs.",
        arguments=VolumeName,
        run=get_volume,
    ),
    ToolDef(
        name="create_volume",
        title="Create a volume",
        description="Create a volume that outlives VMs; attach it with create_vm's volumes. "
        "It is formatted ext4 when a VM first starts with it.",
        arguments=CreateVolume,
        run=create_volume,
        action=Action.MANAGE_VMS,
        idempotent=False,
    ),
    ToolDef(
        name="resize_volume",
        title="Grow a volume",
        description="Grow a volume and its file system; refused smaller, and while a VM runs "
        "with it (stop that VM first).",
        arguments=ResizeVolume,
        run=resize_volume,
        action=Action.MANAGE_VMS,
    ),
    ToolDef(
        name="delete_volume",
        title="Delete a volume",
        description="Delete a volume and its data; refused while any VM has it attached.",
        arguments=VolumeName,
        run=delete_volume,
        action=Action.MANAGE_VMS,
        destructive=True,
    ),
)
