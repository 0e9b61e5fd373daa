"""Conversions between the domain models and D-Bus values (a{sv} dictionaries, object paths)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdbus.sd_bus_internals import decode_object_path, encode_object_path

from volant.engine.agentports import GuestReplyLike
from volant.model import (
    Event,
    InvalidArgument,
    Plugin,
    PluginSource,
    VirtualMachine,
    VMQuery,
    VMSortKey,
    VMSpec,
    VMStatus,
    Volume,
    VolumeMount,
    mappings_from,
)

from .interfaces import PLUGIN_PATH_PREFIX, VM_PATH_PREFIX, VarDict

INTEGER_TYPES = frozenset("ynqiuxt")
SCALARS: tuple[tuple[type, str], ...] = ((bool, "b"), (int, "x"), (float, "d"), (str, "s"))
SPEC_KEYS = {"name": "s", "plugin": "s", "cpu_cores": "int", "memory_mb": "int",
             "kernel_args": "s", "isolated": "b", "ephemeral": "b",
             "volumes": "aa{sv}", "publish": "as"}  # fmt: skip
MOUNT_KEYS = {"name": "s", "path": "s", "read_only": "b"}
# A size is bytes (any integer type) or a text with a suffix ("1G").
VOLUME_KEYS = {"name": "s", "size": "size"}
QUERY_KEYS = {"status": "s", "plugin": "s", "prefix": "s", "sort": "s", "descending": "b",
              "limit": "int", "offset": "int"}  # fmt: skip
INSTALL_KEYS = {"manifest": "s", "url": "s", "signature": "s", "origin": "s", "replace": "b"}


def vm_path(name: str) -> str:
    """`/com/volantvm/Volant1/vm/<name>`, escaped as sd_bus_path_encode does."""
    return str(encode_object_path(VM_PATH_PREFIX, name))


def vm_name_of(path: str) -> str:
    return str(decode_object_path(VM_PATH_PREFIX, path))


def plugin_path(name: str) -> str:
    """`/com/volantvm/Volant1/plugin/<name>`, escaped like the VM paths."""
    return str(encode_object_path(PLUGIN_PATH_PREFIX, name))


def plugin_name_of(path: str) -> str:
    return str(decode_object_path(PLUGIN_PATH_PREFIX, path))


def variant(value: Any) -> tuple[str, Any] | None:
    """A JSON-like value as a D-Bus variant; None (JSON null) has no variant and is left out."""
    if value is None:
        return None
    for kind, signature in SCALARS:  # bool before int: a bool is an int too
        if isinstance(value, kind):
            return (signature, value)
    if isinstance(value, Mapping):
        return ("a{sv}", vardict(value))
    if isinstance(value, list | tuple):
        return ("av", [v for v in map(variant, value) if v is not None])
    return ("s", str(value))


def vardict(data: Mapping[str, Any]) -> VarDict:
    out: VarDict = {}
    for key, value in data.items():
        encoded = variant(value)
        if encoded is not None:
            out[str(key)] = encoded
    return out


def vm_to_dbus(vm: VirtualMachine) -> VarDict:
    """The REST representation's fields, plus the VM's object path."""
    out = vardict(vm.to_dict())
    out["object_path"] = ("o", vm_path(vm.name))
    return out


def event_to_dbus(event: Event) -> VarDict:
    return vardict(event.to_dict())


def plugin_to_dbus(plugin: Plugin, *, manifest: bool = False) -> VarDict:
    """The REST representation's fields and the object path; the manifest JSON on request."""
    out = vardict(plugin.to_dict())
    out["object_path"] = ("o", plugin_path(plugin.name))
    if manifest:
        out["manifest_json"] = ("s", plugin.manifest_json)
    return out


def reply_to_dbus(reply: GuestReplyLike) -> VarDict:
    """A workload's HTTP answer, passed through: status, content type and body bytes."""
    return {
        "status": ("u", reply.status),
        "content_type": ("s", reply.content_type),
        "body": ("ay", reply.body),
    }


def _typed(request: Mapping[str, tuple[str, Any]], keys: Mapping[str, str], what: str
           ) -> dict[str, Any]:  # fmt: skip
    """The request's values, each checked against its key's expected variant type."""
    values: dict[str, Any] = {}
    for key, (signature, value) in request.items():
        expected = keys.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown key {key!r} in the {what}", field=key)
        if expected == "int":
            ok = signature in INTEGER_TYPES
        elif expected == "size":
            ok = signature in INTEGER_TYPES or signature == "s"
        else:
            ok = signature == expected
        if not ok:
            want = "an integer" if expected == "int" else f"type {expected!r}"
            raise InvalidArgument(
                f"{key}: expected {want}, got variant type {signature!r}", field=key
            )
        values[key] = value
    return values


def spec_from_dbus(spec: Mapping[str, tuple[str, Any]]) -> VMSpec:
    """CreateVM's a{sv}: unknown keys and wrong variant types are InvalidArgument."""
    values = _typed(spec, SPEC_KEYS, "VM spec")
    if "name" not in values:
        raise InvalidArgument("the VM spec needs a 'name'", field="name")
    return VMSpec(
        name=values["name"],
        plugin=values.get("plugin", ""),
        cpu_cores=values.get("cpu_cores"),
        memory_mb=values.get("memory_mb"),
        kernel_args=values.get("kernel_args", ""),
        isolated=values.get("isolated", False),
        ephemeral=values.get("ephemeral", False),
        volumes=tuple(_mount(m) for m in values.get("volumes", [])),
        # Absent: the plugin's network.publish; an empty array publishes nothing.
        publish=mappings_from(values["publish"]) if "publish" in values else None,
    )


def _mount(mount: Mapping[str, tuple[str, Any]]) -> VolumeMount:
    values = _typed(mount, MOUNT_KEYS, "volume of the VM spec")
    if "name" not in values or "path" not in values:
        raise InvalidArgument("each volume needs a 'name' and a 'path'", field="volumes")
    return VolumeMount(values["name"], values["path"], bool(values.get("read_only", False)))


def volume_request_from_dbus(request: Mapping[str, tuple[str, Any]]) -> tuple[str, int | str]:
    """CreateVolume's (and, without name, ResizeVolume's) a{sv}: (name, size)."""
    values = _typed(request, VOLUME_KEYS, "volume request")
    if "size" not in values:
        raise InvalidArgument(
            "the volume request needs a 'size' (bytes, or like '1G')", field="size"
        )
    return str(values.get("name", "")), values["size"]


def volume_to_dbus(volume: Volume) -> VarDict:
    return vardict(volume.to_dict())


def query_from_dbus(filters: Mapping[str, tuple[str, Any]]) -> VMQuery:
    """QueryVMs's a{sv}: status, plugin, prefix, sort, descending, limit (0: all), offset."""
    values = _typed(filters, QUERY_KEYS, "VM query")
    try:
        status = VMStatus(values["status"]) if values.get("status") else None
        sort = VMSortKey(values.get("sort") or VMSortKey.NAME)
    except ValueError as exc:
        raise InvalidArgument(f"VM query: {exc}") from exc
    limit, offset = int(values.get("limit", 0)), int(values.get("offset", 0))
    if limit < 0 or offset < 0:
        raise InvalidArgument("VM query: limit and offset must not be negative")
    return VMQuery(
        status=status,
        plugin=values.get("plugin") or None,
        prefix=values.get("prefix", ""),
        sort=sort,
        descending=bool(values.get("descending", False)),
        limit=limit or None,
        offset=offset,
    )


def install_from_dbus(request: Mapping[str, tuple[str, Any]]) -> tuple[PluginSource, bool]:
    """InstallPlugin's a{sv} as (source, replace); the engine checks manifest-or-url."""
    values = _typed(request, INSTALL_KEYS, "install request")
    source = PluginSource(
        text=str(values.get("manifest", "")).encode("utf-8"),
        url=values.get("url", ""),
        signature=values.get("signature") or None,
        origin=values.get("origin", ""),
    )
    return source, bool(values.get("replace", False))
