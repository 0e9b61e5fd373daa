"""Volant's D-Bus interfaces, declared once: the server overrides them, clients proxy them.

manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
path = await manager.create_vm({"name": ("s", "web"), "plugin": ("s", "caddy")})
vm = VMInterface.new_proxy(SERVICE, path, bus)
print(await vm.status)
plugin = PluginInterface.new_proxy(SERVICE, plugin_path("caddy"), bus)
"""

from __future__ import annotations

from typing import Any

from sdbus import (
    DbusInterfaceCommonAsync,
    DbusPropertyEmitsChangeFlag,
    DbusUnprivilegedFlag,
    dbus_method_async,
    dbus_property_async,
    dbus_signal_async,
)

SERVICE = "com.volantvm.Volant1"
MANAGER_PATH = "/com/volantvm/Volant1"
VM_PATH_PREFIX = "/com/volantvm/Volant1/vm"
PLUGIN_PATH_PREFIX = "/com/volantvm/Volant1/plugin"
MANAGER_INTERFACE = "com.volantvm.Volant1.Manager"
VM_INTERFACE = "com.volantvm.Volant1.VM"
PLUGIN_INTERFACE = "com.volantvm.Volant1.Plugin"

VarDict = dict[str, tuple[str, Any]]
CALL = DbusUnprivilegedFlag
PROP = DbusPropertyEmitsChangeFlag


class ManagerInterface(DbusInterfaceCommonAsync, interface_name=MANAGER_INTERFACE):
    """The VM and plugin catalogues: one method per engine verb, lifecycle events as signals."""

    @dbus_method_async("", "aa{sv}", CALL, ("vms",), method_name="ListVMs")
    async def list_vms(self) -> list[VarDict]:
        raise NotImplementedError

    @dbus_method_async(
        "a{sv}", "aa{sv}t", CALL, ("vms", "total"), ("filters",), method_name="QueryVMs"
    )
    async def query_vms(self, filters: VarDict) -> tuple[list[VarDict], int]:
        """VMs matching filters (status, plugin, prefix, sort, descending, limit, offset) and
        how many match before limit and offset."""
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("vm",), ("name",), method_name="GetVM")
    async def get_vm(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("usage",), ("name",), method_name="GetVMUsage")
    async def get_vm_usage(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("a{sv}", "o", CALL, ("vm_path",), ("spec",), method_name="CreateVM")
    async def create_vm(self, spec: VarDict) -> str:
        raise NotImplementedError

    @dbus_method_async("s", "", CALL, (), ("name",), method_name="DestroyVM")
    async def destroy_vm(self, name: str) -> None:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("vm",), ("name",), method_name="StartVM")
    async def start_vm(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("vm",), ("name",), method_name="StopVM")
    async def stop_vm(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("vm",), ("name",), method_name="RestartVM")
    async def restart_vm(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async(
        "tu", "aa{sv}", CALL, ("events",), ("after_id", "limit"), method_name="ListEvents"
    )
    async def list_events(self, after_id: int, limit: int) -> list[VarDict]:
        raise NotImplementedError

    @dbus_method_async("", "a{sv}", CALL, ("status",), method_name="GetSystemStatus")
    async def get_system_status(self) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("", "a{sv}", CALL, ("info",), method_name="GetSystemInfo")
    async def get_system_info(self) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("", "aa{sv}", CALL, ("plugins",), method_name="ListPlugins")
    async def list_plugins(self) -> list[VarDict]:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("plugin",), ("name",), method_name="GetPlugin")
    async def get_plugin(self, name: str) -> VarDict:
        """The plugin's fields, its object path, and its manifest as JSON ("manifest_json")."""
        raise NotImplementedError

    @dbus_method_async("", "s", CALL, ("schema_json",), method_name="GetPluginSchema")
    async def get_plugin_schema(self) -> str:
        """The JSON Schema (draft 2020-12) of plugin manifests, as JSON text."""
        raise NotImplementedError

    @dbus_method_async(
        "a{sv}", "o", CALL, ("plugin_path",), ("request",), method_name="InstallPlugin"
    )
    async def install_plugin(self, request: VarDict) -> str:
        """request: manifest (s, the text) or url (s); signature (s), origin (s), replace (b)."""
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("plugin",), ("name",), method_name="EnablePlugin")
    async def enable_plugin(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("plugin",), ("name",), method_name="DisablePlugin")
    async def disable_plugin(self, name: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "", CALL, (), ("name",), method_name="RemovePlugin")
    async def remove_plugin(self, name: str) -> None:
        raise NotImplementedError

    @dbus_method_async("a{sv}", "a{sv}", CALL, ("build",), ("request",), method_name="BuildPlugin")
    async def build_plugin(self, request: VarDict) -> VarDict:
        """Start a plugin build from an OCI image; the build (id, state, …), running. request:
        image (s) and any of name, version, workdir, user, workload_type, base_url,
        health_path (s), entrypoint, args (as), env (a{ss}), cpu_cores, memory_mb (integer),
        replace (b). Progress comes as BUILD_* events (the VMEvent signal)."""
        raise NotImplementedError

    @dbus_method_async("", "aa{sv}", CALL, ("builds",), method_name="ListBuilds")
    async def list_builds(self) -> list[VarDict]:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("build",), ("id",), method_name="GetBuild")
    async def get_build(self, build_id: str) -> VarDict:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("build",), ("id",), method_name="CancelBuild")
    async def cancel_build(self, build_id: str) -> VarDict:
        """Cancel a running build (it leaves nothing behind) and forget it; a finished one is
        forgotten. The build as it ended."""
        raise NotImplementedError

    @dbus_method_async(
        "ssays",
        "a{sv}",
        CALL,
        ("reply",),
        ("vm", "action", "body", "content_type"),
        method_name="CallAction",
    )
    async def call_action(self, vm: str, action: str, body: bytes, content_type: str) -> VarDict:
        """The workload's HTTP answer: status (u), content_type (s), body (ay)."""
        raise NotImplementedError

    @dbus_method_async(
        "ssays",
        "a{sv}",
        CALL,
        ("reply",),
        ("plugin", "action", "body", "content_type"),
        method_name="CallPluginAction",
    )
    async def call_plugin_action(
        self, plugin: str, action: str, body: bytes, content_type: str
    ) -> VarDict:
        """CallAction on the first running VM (by name) of the plugin."""
        raise NotImplementedError

    @dbus_method_async("su", "ay", CALL, ("log",), ("name", "lines"), method_name="GetConsoleLog")
    async def get_console_log(self, name: str, lines: int) -> bytes:
        """The last lines (0: 100) the VM printed on its serial console, as bytes."""
        raise NotImplementedError

    @dbus_method_async("", "aa{sv}", CALL, ("volumes",), method_name="ListVolumes")
    async def list_volumes(self) -> list[VarDict]:
        raise NotImplementedError

    @dbus_method_async("s", "a{sv}", CALL, ("volume",), ("name",), method_name="GetVolume")
    async def get_volume(self, name: str) -> VarDict:
        """The volume: size_bytes, allocated_bytes, formatted, missing, in_use_by and its
        attachments (vm, path, read_only, vm_status)."""
        raise NotImplementedError

    @dbus_method_async(
        "a{sv}", "a{sv}", CALL, ("volume",), ("request",), method_name="CreateVolume"
    )
    async def create_volume(self, request: VarDict) -> VarDict:
        """request: name (s) and size (bytes as an integer, or s such as "1G")."""
        raise NotImplementedError

    @dbus_method_async(
        "sa{sv}", "a{sv}", CALL, ("volume",), ("name", "request"), method_name="ResizeVolume"
    )
    async def resize_volume(self, name: str, request: VarDict) -> VarDict:
        """request: size (grow only; refused while a VM runs with the volume)."""
        raise NotImplementedError

    @dbus_method_async("s", "", CALL, (), ("name",), method_name="DeleteVolume")
    async def delete_volume(self, name: str) -> None:
        """Refused (Conflict) while any VM has the volume attached."""
        raise NotImplementedError

    @dbus_signal_async("tssa{sv}", ("id", "type", "vm", "payload"), signal_name="VMEvent")
    def vm_event(self) -> tuple[int, str, str, VarDict]:
        raise NotImplementedError


class VMInterface(DbusInterfaceCommonAsync, interface_name=VM_INTERFACE):
    """One VM: its state as properties (PropertiesChanged on every change) and its verbs."""

    @dbus_property_async("s", PROP, property_name="Name")
    def name(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Status")
    def status(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="StatusReason")
    def status_reason(self) -> str:
        """Why the VM is in error or crashed, or stopped on its own; empty otherwise."""
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="IPAddress")
    def ip_address(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="MAC")
    def mac(self) -> str:
        raise NotImplementedError

    @dbus_property_async("u", PROP, property_name="PID")
    def pid(self) -> int:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Unit")
    def unit(self) -> str:
        raise NotImplementedError

    @dbus_property_async("u", PROP, property_name="CPUs")
    def cpus(self) -> int:
        raise NotImplementedError

    @dbus_property_async("u", PROP, property_name="MemoryMB")
    def memory_mb(self) -> int:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Plugin")
    def plugin(self) -> str:
        raise NotImplementedError

    # Named and encoded as systemd's own unit properties: UINT64_MAX when not accounted. Like
    # systemd's, they change all the time and so announce no PropertiesChanged.
    @dbus_property_async("t", property_name="CPUUsageNSec")
    def cpu_usage_nsec(self) -> int:
        raise NotImplementedError

    @dbus_property_async("t", property_name="MemoryCurrent")
    def memory_current(self) -> int:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Start")
    async def start(self) -> None:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Stop")
    async def stop(self) -> None:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Restart")
    async def restart(self) -> None:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Destroy")
    async def destroy(self) -> None:
        raise NotImplementedError


class PluginInterface(DbusInterfaceCommonAsync, interface_name=PLUGIN_INTERFACE):
    """One installed plugin: its record as properties and its verbs."""

    @dbus_property_async("s", PROP, property_name="Name")
    def name(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Version")
    def version(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Runtime")
    def runtime(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Digest")
    def digest(self) -> str:
        raise NotImplementedError

    @dbus_property_async("b", PROP, property_name="Enabled")
    def enabled(self) -> bool:
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Signer")
    def signer(self) -> str:
        """The trusted key that signed the manifest; empty when unsigned."""
        raise NotImplementedError

    @dbus_property_async("s", PROP, property_name="Source")
    def source(self) -> str:
        """Where the manifest was installed from; empty when unknown."""
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Enable")
    async def enable(self) -> None:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Disable")
    async def disable(self) -> None:
        raise NotImplementedError

    @dbus_method_async("", "", CALL, method_name="Remove")
    async def remove(self) -> None:
        raise NotImplementedError
