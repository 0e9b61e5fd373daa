"""Conversions between the domain models and D-Bus values (a{sv} dictionaries, object paths)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdbus.sd_bus_internals import decode_object_path, encode_object_path

from volant.config import Config
from volant.model import Event, InvalidArgument, VirtualMachine, VMSpec

from .interfaces import VM_PATH_PREFIX, VarDict

INTEGER_TYPES = frozenset("ynqiuxt")
SCALARS: tuple[tuple[type, str], ...] = ((bool, "b"), (int, "x"), (float, "d"), (str, "s"))
SPEC_KEYS = {"name": "s", "plugin": "s", "cpu_cores": "int", "memory_mb": "int",
             "kernel_args": "s"}  # fmt: skip


def vm_path(name: str) -> str:
    """`/com/volantvm/Volant1/vm/<name>`, escaped as sd_bus_path_encode does."""
    return str(encode_object_path(VM_PATH_PREFIX, name))


def vm_name_of(path: str) -> str:
    return str(decode_object_path(VM_PATH_PREFIX, path))


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


def spec_from_dbus(spec: Mapping[str, tuple[str, Any]], config: Config) -> VMSpec:
    """CreateVM's a{sv}: unknown keys and wrong variant types are InvalidArgument."""
    values: dict[str, Any] = {}
    for key, (signature, value) in spec.items():
        expected = SPEC_KEYS.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown key {key!r} in the VM spec", field=key)
        ok = signature in INTEGER_TYPES if expected == "int" else signature == expected
        if not ok:
            want = "an integer" if expected == "int" else f"type {expected!r}"
            raise InvalidArgument(
                f"{key}: expected {want}, got variant type {signature!r}", field=key
            )
        values[key] = value
    if "name" not in values:
        raise InvalidArgument("the VM spec needs a 'name'", field="name")
    return VMSpec(
        name=values["name"],
        plugin=values.get("plugin", ""),
        cpu_cores=values.get("cpu_cores", config.vm_default_cpus),
        memory_mb=values.get("memory_mb", config.vm_default_memory_mb),
        kernel_args=values.get("kernel_args", ""),
    )
