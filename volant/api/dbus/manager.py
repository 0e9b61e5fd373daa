"""The manager object: com.volantvm.Volant1.Manager and the ObjectManager at the root path.

Handlers are thin: authorise the caller with polkit, decode, make one engine call, encode.
Handlers that change a VM or a plugin update its object before they reply, so a caller never
sees its object lag behind its own change.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from sdbus import (
    DbusObjectManagerInterfaceAsync,
    SdBus,
    dbus_method_async_override,
    get_current_message,
)

from volant.auth.polkit import Action, Authorizer, BusCaller
from volant.engine import Engine
from volant.model import VirtualMachine
from volant.model.builds import BuildSpec

from .codec import (
    install_from_dbus,
    plugin_to_dbus,
    query_from_dbus,
    reply_to_dbus,
    spec_from_dbus,
    vardict,
    vm_to_dbus,
    volume_request_from_dbus,
    volume_to_dbus,
)
from .errors import dbus_errors
from .interfaces import ManagerInterface, VarDict
from .objects import vm_objects
from .plugin_objects import plugin_objects


class ManagerObject(DbusObjectManagerInterfaceAsync, ManagerInterface):
    """`/com/volantvm/Volant1`: the verbs, and the VM and plugin objects under it."""

    def __init__(self, bus: SdBus, engine: Engine, authorizer: Authorizer) -> None:
        super().__init__()
        self._engine = engine
        self._authorizer = authorizer
        self.vms = vm_objects(bus, self, self)
        self.plugins = plugin_objects(bus, self, self)

    async def _authorize(self, action: Action) -> None:
        sender = get_current_message().sender
        await self._authorizer.check(BusCaller(sender or ""), action)

    # -- VMs ------------------------------------------------------------------------------------

    @dbus_method_async_override()
    async def list_vms(self) -> list[VarDict]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return [vm_to_dbus(vm) for vm in await self._engine.list_vms()]

    @dbus_method_async_override()
    async def query_vms(self, filters: VarDict) -> tuple[list[VarDict], int]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            vms, total = await self._engine.query_vms(query_from_dbus(filters))
            return [vm_to_dbus(vm) for vm in vms], total

    @dbus_method_async_override()
    async def get_vm(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            vm = vm_to_dbus(await self._engine.get_vm(name))
            mounts = await self._engine.volumes.vm_volumes(name)
            return vm | vardict({"volumes": [m.to_dict() for m in mounts]})

    @dbus_method_async_override()
    async def get_vm_usage(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return vardict((await self._engine.vm_usage(name)).to_dict())

    @dbus_method_async_override()
    async def create_vm(self, spec: VarDict) -> str:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            vm = await self._engine.create_vm(spec_from_dbus(spec))
            return self.vms.upsert(vm)

    @dbus_method_async_override()
    async def destroy_vm(self, name: str) -> None:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            await self._engine.delete_vm(name)
            self.vms.remove(name)

    @dbus_method_async_override()
    async def start_vm(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.start_vm(name))

    @dbus_method_async_override()
    async def stop_vm(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.stop_vm(name))

    @dbus_method_async_override()
    async def restart_vm(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            return self._encode(await self._engine.restart_vm(name))

    @dbus_method_async_override()
    async def call_action(self, vm: str, action: str, body: bytes, content_type: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            reply = await self._engine.call_action(vm, action, body=body, content_type=content_type)
            return reply_to_dbus(reply)

    @dbus_method_async_override()
    async def get_console_log(self, name: str, lines: int) -> bytes:
        with dbus_errors(self._engine.telemetry):
            # Guests print secrets on their console too: reading it is managing the VM.
            await self._authorize(Action.MANAGE_VMS)
            return await self._engine.console_log(name, lines or 100)

    def _encode(self, vm: VirtualMachine) -> VarDict:
        self.vms.upsert(vm)
        return vm_to_dbus(vm)

    # -- plugins --------------------------------------------------------------------------------

    @dbus_method_async_override()
    async def list_plugins(self) -> list[VarDict]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return [plugin_to_dbus(p) for p in await self._engine.list_plugins()]

    @dbus_method_async_override()
    async def get_plugin(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            plugin = await self._engine.get_plugin(name)
            return plugin_to_dbus(plugin, manifest=True)

    @dbus_method_async_override()
    async def get_plugin_schema(self) -> str:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return json.dumps(self._engine.plugin_schema(), sort_keys=True)

    @dbus_method_async_override()
    async def install_plugin(self, request: VarDict) -> str:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            source, replace = install_from_dbus(request)
            plugin = await self._engine.install_plugin(source, replace=replace)
            return self.plugins.upsert(plugin)

    @dbus_method_async_override()
    async def enable_plugin(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            plugin = await self._engine.enable_plugin(name)
            self.plugins.upsert(plugin)
            return plugin_to_dbus(plugin)

    @dbus_method_async_override()
    async def disable_plugin(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            plugin = await self._engine.disable_plugin(name)
            self.plugins.upsert(plugin)
            return plugin_to_dbus(plugin)

    @dbus_method_async_override()
    async def remove_plugin(self, name: str) -> None:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            await self._engine.remove_plugin(name)
            self.plugins.remove(name)

    # -- plugin builds --------------------------------------------------------------------------

    @dbus_method_async_override()
    async def build_plugin(self, request: VarDict) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            spec = BuildSpec.from_dict({key: value for key, (_sig, value) in request.items()})
            return vardict((await self._engine.builds.start_build(spec)).to_dict())

    @dbus_method_async_override()
    async def list_builds(self) -> list[VarDict]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return [vardict(b.to_dict()) for b in self._engine.builds.list_builds()]

    @dbus_method_async_override()
    async def get_build(self, build_id: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return vardict(self._engine.builds.get_build(build_id).to_dict())

    @dbus_method_async_override()
    async def cancel_build(self, build_id: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_PLUGINS)
            return vardict((await self._engine.builds.cancel_build(build_id)).to_dict())

    @dbus_method_async_override()
    async def call_plugin_action(
        self, plugin: str, action: str, body: bytes, content_type: str
    ) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            reply = await self._engine.call_plugin_action(
                plugin, action, body=body, content_type=content_type
            )
            return reply_to_dbus(reply)

    # -- volumes --------------------------------------------------------------------------------

    @dbus_method_async_override()
    async def list_volumes(self) -> list[VarDict]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return [volume_to_dbus(v) for v in await self._engine.volumes.list_volumes()]

    @dbus_method_async_override()
    async def get_volume(self, name: str) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return volume_to_dbus(await self._engine.volumes.get_volume(name))

    @dbus_method_async_override()
    async def create_volume(self, request: VarDict) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            name, size = volume_request_from_dbus(request)
            return volume_to_dbus(await self._engine.volumes.create_volume(name, size))

    @dbus_method_async_override()
    async def resize_volume(self, name: str, request: VarDict) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            _name, size = volume_request_from_dbus(request)
            return volume_to_dbus(await self._engine.volumes.resize_volume(name, size))

    @dbus_method_async_override()
    async def delete_volume(self, name: str) -> None:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.MANAGE_VMS)
            await self._engine.volumes.delete_volume(name)

    # -- events and the host --------------------------------------------------------------------

    @dbus_method_async_override()
    async def list_events(self, after_id: int, limit: int) -> list[VarDict]:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            events = await self._engine.list_events(after_id, limit or 1000)
            return [vardict(event.to_dict()) for event in events]

    @dbus_method_async_override()
    async def get_system_status(self) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return vardict(asdict(await self._engine.system_status()))

    @dbus_method_async_override()
    async def get_system_info(self) -> VarDict:
        with dbus_errors(self._engine.telemetry):
            await self._authorize(Action.READ)
            return vardict(asdict(await self._engine.system_info()))
