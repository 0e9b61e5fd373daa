"""Every engine verb is reachable over REST and over D-Bus (DESIGN.md, Layers)."""

from __future__ import annotations

import inspect
from typing import cast

import pytest
from sdbus.dbus_proxy_async_method import DbusMethodAsync

from volant.api.dbus import ManagerInterface
from volant.api.rest import make_app
from volant.engine import Engine

pytestmark = pytest.mark.unit

# engine method -> (REST method and route, D-Bus Manager method)
PARITY = {
    "list_vms": ("GET /api/v1/vms", "ListVMs"),
    "get_vm": ("GET /api/v1/vms/{name}", "GetVM"),
    "create_vm": ("POST /api/v1/vms", "CreateVM"),
    "delete_vm": ("DELETE /api/v1/vms/{name}", "DestroyVM"),
    "start_vm": ("POST /api/v1/vms/{name}/start", "StartVM"),
    "stop_vm": ("POST /api/v1/vms/{name}/stop", "StopVM"),
    "restart_vm": ("POST /api/v1/vms/{name}/restart", "RestartVM"),
    "vm_usage": ("GET /api/v1/vms/{name}/usage", "GetVMUsage"),
    "list_events": ("GET /api/v1/events", "ListEvents"),
    "system_status": ("GET /api/v1/system/status", "GetSystemStatus"),
}
# The daemon's own hooks, not verbs a caller may use.
INTERNAL = {"start", "close", "host_shutting_down", "power_off_all"}


def test_table_covers_every_public_engine_verb() -> None:
    verbs = {
        name
        for name, member in inspect.getmembers(Engine, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert verbs - INTERNAL == set(PARITY)


def test_every_verb_has_its_rest_route() -> None:
    app = make_app(cast(Engine, object()))
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None
    }
    assert {rest for rest, _dbus in PARITY.values()} <= routes


def test_every_verb_has_its_dbus_method() -> None:
    methods = {
        member.method_name
        for member in vars(ManagerInterface).values()
        if isinstance(member, DbusMethodAsync)
    }
    assert {dbus for _rest, dbus in PARITY.values()} == methods
