"""The MCP tool table: schemas a client can use, arguments checked alike on both sides, error
results with stable codes; and the helper that hosts the SDK's task group in a task of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import jsonschema
import pytest

from volant.api.mcp.lifespan import in_own_task
from volant.api.mcp.tools import (
    TOOLS,
    failure,
    guest_reply,
    inline_refs,
    parse_arguments,
    success,
)
from volant.auth.polkit import Action
from volant.model import InvalidArgument, NotFound
from volant.runtime.guest import GuestReply

pytestmark = pytest.mark.unit

BY_NAME = {tool.name: tool for tool in TOOLS}


def test_every_tool_has_a_usable_schema_and_says_whether_it_changes_anything() -> None:
    assert len(BY_NAME) == len(TOOLS)
    for tool in TOOLS:
        described = tool.describe()
        schema = described.input_schema
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        assert "$ref" not in json.dumps(schema)
        assert described.annotations is not None
        assert described.annotations.read_only_hint is (tool.action is None or tool.read_only)
    changing = {tool.name for tool in TOOLS if tool.action is not None and not tool.read_only}
    assert changing == {
        "create_vm",
        "delete_vm",
        "start_vm",
        "stop_vm",
        "restart_vm",
        "call_action",
        "call_operation",
        "create_volume",
        "resize_volume",
        "delete_volume",
        "write_file",
        "exec_command",
    }
    destructive = {tool.name for tool in TOOLS if tool.destructive}
    assert "exec_command" in destructive  # root in the guest: it can change anything there
    assert {tool.name for tool in TOOLS if tool.action is Action.MANAGE_VMS} == changing | {
        "console_log",  # read-only, but guests print secrets on their console
        "read_file",  # read-only, but files hold the workload's secrets
    }


ARGUMENTS: list[tuple[str, dict[str, Any], bool]] = [
    ("create_vm", {"name": "web", "plugin": "demo"}, True),
    ("create_vm", {"name": "web", "plugin": "demo", "cpu_cores": 2, "memory_mb": 256}, True),
    ("create_vm", {"name": "Web", "plugin": "demo"}, False),
    ("create_vm", {"name": "-web", "plugin": "demo"}, False),
    ("create_vm", {"name": "w" * 64, "plugin": "demo"}, False),
    ("create_vm", {"name": "web"}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "cpu_cores": "2"}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "cpu_cores": True}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "cpu_cores": 1.5}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "memory_mb": 0}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "colour": "red"}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "publish": ["8080:80", "53:53/udp"]}, True),
    ("create_vm", {"name": "web", "plugin": "demo", "publish": []}, True),
    ("create_vm", {"name": "web", "plugin": "demo", "publish": ["0:80"]}, False),
    ("create_vm", {"name": "web", "plugin": "demo", "publish": "8080:80"}, False),
    ("get_vm", {"name": "web"}, True),
    ("get_vm", {"name": 7}, False),
    ("list_vms", {}, True),
    ("list_vms", {"status": "running", "limit": 5, "prefix": "w"}, True),
    ("list_vms", {"status": "asleep"}, False),
    ("list_vms", {"limit": 0}, False),
    ("list_plugins", {}, True),
    ("list_plugins", {"all": True}, False),
    ("call_action", {"name": "web", "action": "greet"}, True),
    ("call_action", {"name": "web", "action": "echo", "input": {"ping": [1, None, "x"]}}, True),
    ("call_action", {"name": "web", "action": "echo", "input": "text"}, True),
    ("call_action", {"name": "web", "action": "Greet"}, False),
    ("call_action", {"name": "web"}, False),
    ("call_action", {"name": "web", "action": "greet", "body": "x"}, False),
    ("vm_logs", {"name": "web"}, True),
    ("vm_logs", {"name": "web", "limit": 10}, True),
    ("vm_logs", {"name": "web", "limit": 0}, False),
    ("console_log", {"name": "web", "lines": 10_000}, True),
    ("console_log", {"name": "web", "lines": 10_001}, False),
    ("list_events", {}, True),
    ("list_events", {"vm": "web", "types": ["VM_CREATED", "VM_DELETED"], "after": 3}, True),
    ("list_events", {"types": ["VM_EXPLODED"]}, False),
    ("list_events", {"types": "VM_CREATED"}, False),
    ("list_events", {"vm": "Web"}, False),
    ("list_events", {"after": -1}, False),
    ("system_status", {}, True),
    (
        "create_vm",
        {"name": "db", "plugin": "pg", "volumes": [{"name": "data", "path": "/srv"}]},
        True,
    ),
    ("create_vm", {"name": "db", "plugin": "pg", "volumes": [{"name": "data"}]}, False),
    ("create_vm", {"name": "db", "plugin": "pg", "volumes": [{"name": "d", "path": "srv"}]}, False),
    ("create_volume", {"name": "data", "size": "1G"}, True),
    ("create_volume", {"name": "data", "size": 1 << 30}, True),
    ("create_volume", {"name": "data"}, False),
    ("create_volume", {"name": "a" * 21, "size": "1G"}, False),
    ("resize_volume", {"name": "data", "size": "2G"}, True),
    ("get_volume", {"name": "data"}, True),
    ("delete_volume", {"name": "Data"}, False),
    ("list_volumes", {}, True),
]


@pytest.mark.parametrize(("tool", "arguments", "valid"), ARGUMENTS)
def test_the_schema_and_the_server_agree_on_arguments(
    tool: str, arguments: dict[str, Any], valid: bool
) -> None:
    definition = BY_NAME[tool]
    schema = definition.describe().input_schema
    assert jsonschema.Draft202012Validator(schema).is_valid(arguments) is valid
    if valid:
        parse_arguments(definition.arguments, arguments)
    else:
        with pytest.raises(InvalidArgument) as err:
            parse_arguments(definition.arguments, arguments)
        assert err.value.field


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(InvalidArgument, match="unknown argument 'colour'") as err:
        parse_arguments(BY_NAME["create_vm"].arguments, {"name": "a", "plugin": "b", "colour": 1})
    assert err.value.field == "colour"
    with pytest.raises(InvalidArgument, match=r"^cpu_cores: ") as err:
        parse_arguments(
            BY_NAME["create_vm"].arguments, {"name": "a", "plugin": "b", "cpu_cores": 0}
        )
    assert err.value.field == "cpu_cores"


def test_results_carry_json_and_errors_their_code() -> None:
    ok = success({"vms": [], "total": 0})
    assert not ok.is_error
    assert ok.structured_content == {"vms": [], "total": 0}
    assert [json.loads(block.text) for block in ok.content if block.type == "text"] == [
        {"vms": [], "total": 0}
    ]
    bad = failure(NotFound("no VM named 'x'", hint="list_vms shows them", field="name"))
    assert bad.is_error
    assert bad.structured_content == {
        "error": {
            "code": "NotFound",
            "message": "no VM named 'x'",
            "field": "name",
            "hint": "list_vms shows them",
        }
    }
    assert [block.text for block in bad.content if block.type == "text"] == [
        "NotFound: no VM named 'x' (hint: list_vms shows them)"
    ]


@pytest.mark.parametrize(
    ("content_type", "body", "shown"),
    [
        ("application/json", b'{"a": 1}', {"json": {"a": 1}}),
        ("application/problem+json; charset=utf-8", b"[1]", {"json": [1]}),
        ("application/json", b"not json", {"text": "not json"}),
        ("text/plain", b"caf\xc3\xa9", {"text": "caf\u00e9"}),
        ("", b"", {"text": ""}),
        ("application/octet-stream", b"\xff\x00", {"base64": "/wA="}),
    ],
)
def test_a_workload_answer_is_json_text_or_base64(
    content_type: str, body: bytes, shown: dict[str, Any]
) -> None:
    reply = GuestReply(status=418, content_type=content_type, body=body)
    assert guest_reply(reply) == {"status": 418, "content_type": content_type, **shown}


def test_inline_refs_writes_definitions_out() -> None:
    schema = {
        "type": "object",
        "properties": {"s": {"anyOf": [{"$ref": "#/$defs/S"}, {"type": "null"}]}},
        "$defs": {"S": {"enum": ["a", "b"]}},
    }
    assert inline_refs(schema) == {
        "type": "object",
        "properties": {"s": {"anyOf": [{"enum": ["a", "b"]}, {"type": "null"}]}},
    }


# -- in_own_task ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def task_group(log: list[str]) -> AsyncIterator[None]:
    """Like the SDK's session manager: an anyio task group, which one task must enter and leave."""
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.sleep_forever)
        log.append("entered")
        yield
        group.cancel_scope.cancel()
    log.append("left")


async def test_entered_and_left_from_different_tasks() -> None:
    log: list[str] = []
    hosted = in_own_task(lambda: task_group(log), name="test")
    await asyncio.create_task(hosted.__aenter__())
    assert log == ["entered"]
    await asyncio.create_task(hosted.__aexit__(None, None, None))
    assert log == ["entered", "left"]


async def test_a_failure_to_enter_is_raised() -> None:
    @contextlib.asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        if not log:
            raise OSError("cannot start")
        yield

    log: list[str] = []

    with pytest.raises(OSError, match="cannot start"):
        async with in_own_task(broken, name="test"):
            pytest.fail("entered")


async def test_a_host_that_will_not_leave_is_cancelled_after_grace() -> None:
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def stubborn() -> AsyncIterator[None]:
        try:
            yield
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async with in_own_task(stubborn, name="test", grace=0.1):
        pass
    assert log == ["cancelled"]
