"""The D-Bus wire forms: object paths, a{sv} encoding, the CreateVM spec and the error classes."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from volant.api.dbus.codec import (
    install_from_dbus,
    plugin_name_of,
    plugin_path,
    plugin_to_dbus,
    reply_to_dbus,
    spec_from_dbus,
    vardict,
    variant,
    vm_name_of,
    vm_path,
    vm_to_dbus,
)
from volant.api.dbus.errors import DBUS_ERRORS, from_dbus, to_dbus
from volant.auth.polkit import ProcessCaller, process_start_time
from volant.config import load_config
from volant.model import (
    ERROR_CLASSES,
    ERROR_TABLE,
    ErrorCode,
    InvalidArgument,
    NotFound,
    Plugin,
    PluginSource,
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
    spec = spec_from_dbus({"name": ("s", "web"), "cpu_cores": ("u", 2)})
    assert (spec.name, spec.cpu_cores, spec.memory_mb, spec.plugin) == ("web", 2, None, "")


def test_spec_publish_absent_empty_or_listed() -> None:
    assert spec_from_dbus({"name": ("s", "web")}).publish is None  # the plugin's default
    assert spec_from_dbus({"name": ("s", "web"), "publish": ("as", [])}).publish == ()
    listed = spec_from_dbus({"name": ("s", "web"), "publish": ("as", ["8080:80", "53:53/udp"])})
    assert [str(p) for p in listed.publish or ()] == ["8080:80/tcp", "53:53/udp"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": ("s", "w"), "colour": ("s", "red")}, "unknown key 'colour'"),
        ({"name": ("s", "w"), "publish": ("s", "8080:80")}, "publish: expected type 'as'"),
        ({"name": ("s", "w"), "publish": ("as", ["80"])}, "not a published port"),
        ({"name": ("s", "w"), "memory_mb": ("s", "1")}, "memory_mb: expected an integer"),
        ({"name": ("u", 1)}, "name: expected type 's'"),
        ({}, "needs a 'name'"),
    ],
)
def test_bad_specs_are_invalid_arguments(
    spec: dict[str, tuple[str, Any]], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_from_dbus(spec)


def test_plugin_paths_and_dict_with_the_manifest_on_request() -> None:
    assert plugin_path("hello-2") == "/com/volantvm/Volant1/plugin/hello_2d2"
    assert plugin_name_of("/com/volantvm/Volant1/plugin/hello_2d2") == "hello-2"
    now = datetime.now(UTC)
    plugin = Plugin(1, "hello", "0.1.0", "hello", '{"name":"hello"}', "sha256:00", True, now, now)
    out = plugin_to_dbus(plugin)
    assert out["enabled"] == ("b", True)
    assert out["object_path"] == ("o", "/com/volantvm/Volant1/plugin/hello")
    assert "signer" not in out  # unsigned: null in REST, absent here
    assert "manifest_json" not in out
    assert plugin_to_dbus(plugin, manifest=True)["manifest_json"] == ("s", '{"name":"hello"}')


def test_install_request_decodes_to_a_source() -> None:
    source, replace = install_from_dbus(
        {"manifest": ("s", "{}"), "origin": ("s", "file:///p/m.json"), "replace": ("b", True)}
    )
    assert source == PluginSource(text=b"{}", origin="file:///p/m.json")
    assert replace is True
    source, replace = install_from_dbus({"url": ("s", "https://x/m.json"), "signature": ("s", "")})
    assert (source.url, source.signature, replace) == ("https://x/m.json", None, False)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"manifest": ("s", "{}"), "force": ("b", True)}, "unknown key 'force'"),
        ({"manifest": ("ay", b"{}")}, "manifest: expected type 's'"),
        ({"url": ("s", "u"), "replace": ("u", 1)}, "replace: expected type 'b'"),
    ],
)
def test_bad_install_requests_are_invalid_arguments(
    request_: dict[str, tuple[str, Any]], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        install_from_dbus(request_)


def test_action_reply_passes_the_workload_answer_through() -> None:
    class Reply:
        status = 201
        content_type = "text/plain"
        body = b"hi"

    assert reply_to_dbus(Reply()) == {
        "status": ("u", 201),
        "content_type": ("s", "text/plain"),
        "body": ("ay", b"hi"),
    }


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
