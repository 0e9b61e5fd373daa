"""The D-Bus front-end: `com.volantvm.Volant1` on the system bus."""

from volant.api.dbus.interfaces import (
    MANAGER_PATH,
    PLUGIN_PATH_PREFIX,
    SERVICE,
    VM_PATH_PREFIX,
    ManagerInterface,
    PluginInterface,
    VMInterface,
)
from volant.api.dbus.server import DbusServer

__all__ = [
    "MANAGER_PATH",
    "PLUGIN_PATH_PREFIX",
    "SERVICE",
    "VM_PATH_PREFIX",
    "DbusServer",
    "ManagerInterface",
    "PluginInterface",
    "VMInterface",
]
