"""Every engine verb is reachable over REST and over D-Bus (DESIGN.md, Layers), and MCP either
has it or says why an agent goes without."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import cast

import pytest
from sdbus.dbus_proxy_async_method import DbusMethodAsync

from volant.api.dbus import ManagerInterface
from volant.api.dbus.codec import SPEC_KEYS
from volant.api.mcp.resources import TEMPLATE
from volant.api.mcp.tools import TOOLS, CreateVM
from volant.api.rest import make_app
from volant.api.rest.schemas import CreateVMRequest
from volant.cli.vms import vms_create
from volant.engine import Engine
from volant.engine.builds import BuildService
from volant.engine.exec import ExecService
from volant.engine.files import Files
from volant.engine.passthrough import Passthrough
from volant.engine.volumes import Volumes
from volant.model import VMSpec

pytestmark = pytest.mark.unit

# engine method -> (REST method and route, D-Bus Manager method)
PARITY = {
    # ListVMs is QueryVMs without filters; REST serves both with one route.
    "list_vms": ("GET /api/v1/vms", "ListVMs"),
    "query_vms": ("GET /api/v1/vms", "QueryVMs"),
    "get_vm": ("GET /api/v1/vms/{name}", "GetVM"),
    "create_vm": ("POST /api/v1/vms", "CreateVM"),
    "delete_vm": ("DELETE /api/v1/vms/{name}", "DestroyVM"),
    "start_vm": ("POST /api/v1/vms/{name}/start", "StartVM"),
    "stop_vm": ("POST /api/v1/vms/{name}/stop", "StopVM"),
    "restart_vm": ("POST /api/v1/vms/{name}/restart", "RestartVM"),
    "vm_usage": ("GET /api/v1/vms/{name}/usage", "GetVMUsage"),
    "call_action": ("POST /api/v1/vms/{name}/actions/{action}", "CallAction"),
    "list_events": ("GET /api/v1/events", "ListEvents"),
    "system_status": ("GET /api/v1/system/status", "GetSystemStatus"),
    "system_info": ("GET /api/v1/system/info", "GetSystemInfo"),
    "plugin_schema": ("GET /api/v1/plugins/schema", "GetPluginSchema"),
    "list_plugins": ("GET /api/v1/plugins", "ListPlugins"),
    "get_plugin": ("GET /api/v1/plugins/{plugin}", "GetPlugin"),
    # GetPlugin carries the manifest too (its "manifest_json" key).
    "plugin_manifest": ("GET /api/v1/plugins/{plugin}/manifest", "GetPlugin"),
    "install_plugin": ("POST /api/v1/plugins", "InstallPlugin"),
    "enable_plugin": ("POST /api/v1/plugins/{plugin}/enable", "EnablePlugin"),
    "disable_plugin": ("POST /api/v1/plugins/{plugin}/disable", "DisablePlugin"),
    "remove_plugin": ("DELETE /api/v1/plugins/{plugin}", "RemovePlugin"),
    "call_plugin_action": ("POST /api/v1/plugins/{plugin}/actions/{action}", "CallPluginAction"),
    "console_log": ("GET /api/v1/vms/{name}/console/log", "GetConsoleLog"),
    # Verbs of the engine's service objects, as "<attribute>.<method>".
    "builds.start_build": ("POST /api/v1/plugins/build", "BuildPlugin"),
    "builds.list_builds": ("GET /api/v1/builds", "ListBuilds"),
    "builds.get_build": ("GET /api/v1/builds/{build}", "GetBuild"),
    "builds.cancel_build": ("DELETE /api/v1/builds/{build}", "CancelBuild"),
}
# Volumes are their own service (Engine.volumes): Volumes method -> (REST, D-Bus, MCP tool).
VOLUME_PARITY = {
    "list_volumes": ("GET /api/v1/volumes", "ListVolumes", "list_volumes"),
    "get_volume": ("GET /api/v1/volumes/{volume}", "GetVolume", "get_volume"),
    "create_volume": ("POST /api/v1/volumes", "CreateVolume", "create_volume"),
    "resize_volume": ("POST /api/v1/volumes/{volume}/resize", "ResizeVolume", "resize_volume"),
    "delete_volume": ("DELETE /api/v1/volumes/{volume}", "DeleteVolume", "delete_volume"),
    # `vms get` shows a VM's volumes: GET /api/v1/vms/{name}, GetVM and get_vm answer them.
    "vm_volumes": ("GET /api/v1/vms/{name}", "GetVM", "get_vm"),
}
# The start hook and repair's questions, not verbs a caller may use.
VOLUME_INTERNAL = {"attach", "wanted_files", "found_files"}
# REST-only verbs, each with the reason it has no D-Bus method (yet).
REST_ONLY = {
    # An OpenAPI document is for HTTP tooling (Swagger UI, code generators) pointed at the VM.
    "vm_openapi": ("GET /api/v1/vms/{name}/openapi", "an HTTP document for HTTP tools"),
    # A live log stream needs a D-Bus design of its own (a signal or an fd); not done yet.
    "vm_logs": ("GET /api/v1/vms/{name}/logs", "a stream (SSE with ?follow=true)"),
    "vm_recent_logs": ("GET /api/v1/vms/{name}/logs", "served with vm_logs by one route"),
    # Prometheus scrapes HTTP; the numbers behind it are in GetSystemStatus.
    "metrics": ("GET /metrics", "a Prometheus scrape target"),
    # A byte stream both ways; over D-Bus it would be a socket passed as an fd (machined's
    # OpenMachinePTY does that), not designed yet.
    "attach_console": ("GET /ws/v1/vms/{name}/console", "a WebSocket bridged to the serial port"),
    # D-Bus has the same events as the VMEvent signal, and ListEvents for the replay.
    "follow_events": ("GET /api/v1/events/vms", "a stream (SSE); on D-Bus the VMEvent signal"),
    # Byte streams of any size both ways; over D-Bus they would be fds, not designed yet.
    "files.read": ("GET /api/v1/vms/{name}/files", "a byte stream (a file, or a tar)"),
    "files.write": ("PUT /api/v1/vms/{name}/files", "a byte stream (a file, or a tar)"),
    # A command in the guest streams both ways (stdin, output, a pty's resizes); over D-Bus
    # that would be fds passed like machined's OpenMachineShell, not designed yet. Exec is
    # root in the guest: an operator has volar and REST, an AI agent has MCP's exec_command.
    "execs.run": ("POST /api/v1/vms/{name}/exec", "a command's output, streamed or whole"),
    "execs.session": ("GET /ws/v1/vms/{name}/exec", "an interactive command (WebSocket)"),
    # The workload's own HTTP API is for HTTP clients; D-Bus would need a socket passed as an
    # fd for the streams, and its callers (Cockpit) reach the workload over HTTP themselves.
    "passthrough.request": ("GET /api/v1/vms/{name}/proxy/{path}", "a byte stream both ways"),
    "passthrough.websocket": ("GET /api/v1/vms/{name}/proxy/{path}", "a WebSocket relay"),
    "passthrough.operations": ("GET /api/v1/vms/{name}/operations", "the workload's HTTP API"),
    "passthrough.call_operation": (
        "POST /api/v1/vms/{name}/operations/{operation}",
        "the workload's HTTP API",
    ),
}
# engine method -> MCP tool, or the manifest resource
MCP = {
    "list_vms": "list_vms",
    "query_vms": "list_vms",
    "get_vm": "get_vm",
    "vm_usage": "get_vm",  # get_vm answers the usage too
    "create_vm": "create_vm",
    "delete_vm": "delete_vm",
    "start_vm": "start_vm",
    "stop_vm": "stop_vm",
    "restart_vm": "restart_vm",
    "call_action": "call_action",
    "list_events": "list_events",
    "system_status": "system_status",
    "list_plugins": "list_plugins",
    "plugin_manifest": TEMPLATE,
    "vm_recent_logs": "vm_logs",
    "console_log": "console_log",
    "builds.list_builds": "list_builds",
    "files.read": "read_file",
    "files.write": "write_file",
    "execs.run": "exec_command",
    "passthrough.operations": "list_operations",
    "passthrough.call_operation": "call_operation",
}
# Verbs MCP leaves out, each with the reason.
MCP_WITHOUT = {
    "system_info": "system_status covers what an agent plans with",
    "plugin_schema": "agents do not write manifests",
    "get_plugin": "list_plugins and the manifest resource hold all of it",
    "install_plugin": "trusting code is an operator's decision, not an agent's",
    "enable_plugin": "the operator's decision, like install",
    "disable_plugin": "the operator's decision, like install",
    "remove_plugin": "the operator's decision, like install",
    "call_plugin_action": "call_action on a VM says which VM answers",
    "vm_openapi": "the manifest resource names the actions",
    "vm_logs": "a stream; vm_logs answers the recent lines",
    "metrics": "a Prometheus scrape target",
    "attach_console": "an interactive byte stream; console_log answers what it printed",
    "follow_events": "a stream; list_events with after= polls it",
    "builds.start_build": "a build installs a plugin: the operator's decision, like install",
    "builds.cancel_build": "the operator's decision, like install",
    "builds.get_build": "list_builds holds all of it",
    "execs.session": "interactive; exec_command runs a command to its end",
    "passthrough.request": "call_operation calls what the workload's document declares",
    "passthrough.websocket": "an interactive stream, no tool call",
}
# Service objects the engine composes: attribute -> class; their public methods are verbs too.
SERVICES = {
    "builds": BuildService,
    "execs": ExecService,
    "files": Files,
    "passthrough": Passthrough,
}
# The daemon's own hooks and the engine's helpers, not verbs a caller may use.
INTERNAL = {
    "start",
    "close",
    "host_shutting_down",
    "power_off_all",
    "validate_spec",  # part of create_vm
    "launch_spec",  # part of starting a VM
    "boot_artifacts",  # part of install_plugin and create_vm
    "prune_artifacts",  # part of start and remove_plugin
    "builds.repair",  # part of start
    "builds.close",  # part of close
    "builds.wait_build",  # a helper for in-process callers (tests); front-ends poll get_build
    "files.read_bytes",  # files.read for MCP, whole and capped
    "files.write_bytes",  # files.write for MCP, from memory
    "files.too_large",  # the limit's error, for the REST upload
    "execs.ready",  # part of the exec WebSocket: refuse before the upgrade
    "execs.running",  # a count, for tests and the limit
}


def test_table_covers_every_public_engine_verb() -> None:
    verbs = {
        name
        for name, member in inspect.getmembers(Engine, inspect.isfunction)
        if not name.startswith("_")
    }
    verbs |= {
        f"{attr}.{name}"
        for attr, cls in SERVICES.items()
        for name, _member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }
    assert verbs - INTERNAL == set(PARITY) | set(REST_ONLY)
    assert not set(PARITY) & set(REST_ONLY)


def test_volume_table_covers_every_public_volumes_verb() -> None:
    verbs = {
        name
        for name, member in inspect.getmembers(Volumes, inspect.isfunction)
        if not name.startswith("_")
    }
    assert verbs - VOLUME_INTERNAL == set(VOLUME_PARITY)


def test_every_verb_has_its_rest_route() -> None:
    app = make_app(cast(Engine, object()))
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None
    }
    wanted = {rest for rest, _dbus in PARITY.values()}
    wanted |= {rest for rest, _reason in REST_ONLY.values()}
    wanted |= {rest for rest, _dbus, _mcp in VOLUME_PARITY.values()}
    assert wanted <= routes


def test_every_verb_has_its_dbus_method() -> None:
    methods = {
        member.method_name
        for member in vars(ManagerInterface).values()
        if isinstance(member, DbusMethodAsync)
    }
    wanted = {dbus for _rest, dbus in PARITY.values()}
    wanted |= {dbus for _rest, dbus, _mcp in VOLUME_PARITY.values()}
    assert wanted == methods


def test_mcp_has_each_verb_or_says_why_not() -> None:
    verbs = set(PARITY) | set(REST_ONLY)
    assert set(MCP) | set(MCP_WITHOUT) == verbs
    assert not set(MCP) & set(MCP_WITHOUT)
    volume_tools = {tool for _rest, _dbus, tool in VOLUME_PARITY.values()}
    assert set(MCP.values()) | volume_tools == {tool.name for tool in TOOLS} | {TEMPLATE}


def test_create_takes_the_same_fields_everywhere() -> None:
    """A field of VMSpec (isolated, say) reaches the engine from REST, D-Bus, MCP and volar."""
    spec = {field.name for field in fields(VMSpec)}
    assert {"isolated", "volumes"} <= spec
    assert set(CreateVMRequest.model_fields) == spec
    assert set(SPEC_KEYS) == spec
    assert set(CreateVM.model_fields) == spec
    cli = {param.name for param in vms_create.params} - {"wait", "as_json"}
    assert cli == spec
