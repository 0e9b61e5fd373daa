"""The D-Bus wire forms: object paths, a{sv} encoding, the CreateVM spec and the error classes."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from volant.api.dbus.codec import spec_from_dbus, vardict, variant, vm_name_of, vm_path, vm_to_dbus
from volant.api.dbus.errors import DBUS_ERRORS, from_dbus, to_dbus
from volant.auth.polkit import ProcessCaller, process_start_time
from volant.config import load_config
from volant.model import (
    ERROR_CLASSES,
    ERROR_TABLE,
    ErrorCode,
    InvalidArgument,
    NotFound,
    VirtualMachine,
    VMStatus,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("web", "/com/volantvm/Volant1/vm/web"),
        ("web-1", "/com/volantvm/Volant1/vm/web_2d1"),
        ("1st", "/com/volantvm/Volant1/vm/_31st"),
    ],
)
def test_vm_paths_use_sd_bus_escaping(name: str, path: str) -> None:
    assert vm_path(name) == path
    assert vm_name_of(path) == name


def test_variants_leave_nulls_out_and_nest() -> None:
    assert variant(None) is None
    assert variant(True) == ("b", True)
    assert variant(3) == ("x", 3)
    assert vardict({"a": None, "b": {"c": 1.5}, "d": ["x", None]}) == {
        "b": ("a{sv}", {"c": ("d", 1.5)}),
        "d": ("av", [("s", "x")]),
    }


def test_vm_dict_carries_the_rest_fields_and_the_path() -> None:
    now = datetime.now(UTC)
    vm = VirtualMachine(1, "web", VMStatus.STOPPED, None, None, "02:56:00:00:00:01", 1, 256,
                        "caddy", "qemu", "", "", now, now)  # fmt: skip
    out = vm_to_dbus(vm)
    assert out["status"] == ("s", "stopped")
    assert "pid" not in out
    assert out["object_path"] == ("o", "/com/volantvm/Volant1/vm/web")


def config(tmp_path: Path) -> Any:
    return load_config([], env={"HOME": str(tmp_path)})


def test_spec_defaults_and_integer_types(tmp_path: Path) -> None:
    spec = spec_from_dbus({"name": ("s", "web"), "cpu_cores": ("u", 2)}, config(tmp_path))
    assert (spec.name, spec.cpu_cores, spec.memory_mb, spec.plugin) == ("web", 2, 256, "")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": ("s", "w"), "colour": ("s", "red")}, "unknown key 'colour'"),
        ({"name": ("s", "w"), "memory_mb": ("s", "1")}, "memory_mb: expected an integer"),
        ({"name": ("u", 1)}, "name: expected type 's'"),
        ({}, "needs a 'name'"),
    ],
)
def test_bad_specs_are_invalid_arguments(
    spec: dict[str, tuple[str, Any]], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_from_dbus(spec, config(tmp_path))


def test_one_dbus_error_per_code_named_from_the_table() -> None:
    assert set(DBUS_ERRORS) == set(ErrorCode)
    for code, cls in DBUS_ERRORS.items():
        assert cls.dbus_error_name == ERROR_TABLE[code].dbus_name
        assert cls.code is code
    assert DBUS_ERRORS[ErrorCode.PERMISSION_DENIED].dbus_error_name == (
        "com.volantvm.Volant1.Error.PermissionDenied"
    )
    assert ERROR_TABLE[ErrorCode.PERMISSION_DENIED].http_status == 403


def test_errors_round_trip_with_their_hint() -> None:
    wire = to_dbus(NotFound("no VM named 'x'", hint="volar vms list"))
    back = from_dbus(wire)
    assert type(back) is ERROR_CLASSES[ErrorCode.NOT_FOUND]
    assert (back.message, back.hint) == ("no VM named 'x'", "volar vms list")


def test_process_subject_pins_the_start_time() -> None:
    caller = ProcessCaller.from_peercred(os.getpid(), os.getuid())
    assert caller.start_time == process_start_time(os.getpid()) > 0
    kind, details = caller.subject()
    assert kind == "unix-process"
    assert details["pid"] == ("u", os.getpid())
    assert details["start-time"][0] == "t"
