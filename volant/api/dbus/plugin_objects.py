"""The per-plugin D-Bus objects: `/com/volantvm/Volant1/plugin/<name>`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from sdbus import (
    DbusObjectManagerInterfaceAsync,
    SdBus,
    dbus_method_async_override,
    dbus_property_async_override,
)

from volant.model import Plugin

from .codec import plugin_path
from .interfaces import PLUGIN_INTERFACE, PluginInterface
from .objects import Objects, PropertyTable, changed_properties

# D-Bus property name -> (signature, value from the stored plugin); the XML's order.
PLUGIN_PROPERTIES: PropertyTable[Plugin] = {
    "Name": ("s", lambda p: p.name),
    "Version": ("s", lambda p: p.version),
    "Runtime": ("s", lambda p: p.runtime),
    "Digest": ("s", lambda p: p.digest),
    "Enabled": ("b", lambda p: p.enabled),
    "Signer": ("s", lambda p: p.signer),
    "Source": ("s", lambda p: p.source),
}


class PluginVerbTarget(Protocol):
    """What a plugin object's methods call: the manager's verbs, by plugin name."""

    def enable_plugin(self, name: str) -> Awaitable[Any]: ...
    def disable_plugin(self, name: str) -> Awaitable[Any]: ...
    def remove_plugin(self, name: str) -> Awaitable[None]: ...


class PluginObject(PluginInterface):
    """One installed plugin, as last read from the store."""

    def __init__(self, manager: PluginVerbTarget, plugin: Plugin) -> None:
        super().__init__()
        self._manager = manager
        self._plugin = plugin

    @property
    def plugin(self) -> Plugin:
        return self._plugin

    def update(self, plugin: Plugin) -> None:
        """Take a newer stored state; announce the properties that changed."""
        changed = changed_properties(PLUGIN_PROPERTIES, self._plugin, plugin)
        self._plugin = plugin
        if changed:
            self.properties_changed.emit((PLUGIN_INTERFACE, changed, []))

    @dbus_property_async_override()
    def name(self) -> str:
        return self._plugin.name

    @dbus_property_async_override()
    def version(self) -> str:
        return self._plugin.version

    @dbus_property_async_override()
    def runtime(self) -> str:
        return self._plugin.runtime

    @dbus_property_async_override()
    def digest(self) -> str:
        return self._plugin.digest

    @dbus_property_async_override()
    def enabled(self) -> bool:
        return self._plugin.enabled

    @dbus_property_async_override()
    def signer(self) -> str:
        return self._plugin.signer

    @dbus_property_async_override()
    def source(self) -> str:
        return self._plugin.source

    @dbus_method_async_override()
    async def enable(self) -> None:
        await self._manager.enable_plugin(self._plugin.name)

    @dbus_method_async_override()
    async def disable(self) -> None:
        await self._manager.disable_plugin(self._plugin.name)

    @dbus_method_async_override()
    async def remove(self) -> None:
        await self._manager.remove_plugin(self._plugin.name)


def plugin_objects(
    bus: SdBus, manager: DbusObjectManagerInterfaceAsync, verbs: PluginVerbTarget
) -> Objects[Plugin, PluginObject]:
    return Objects(bus, manager, lambda plugin: PluginObject(verbs, plugin), plugin_path)
