"""The shape of an MCP tool: its arguments model, its engine call, its polkit action.

Kept apart from the tool catalogues (tools.py, volume_tools.py) so each can declare tools.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mcp import types
from pydantic import BaseModel, ConfigDict

from volant.api.validation import validate_model
from volant.auth.polkit import Action
from volant.engine import Engine
from volant.engine.agentports import GuestReplyLike

A = TypeVar("A", bound=BaseModel)
Authorize = Callable[[Action], Awaitable[None]]


class Arguments(BaseModel):
    """Tool arguments: unknown keys and loosely typed values are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ToolDef(Generic[A]):
    """One tool: its name and description for the model, its arguments and its engine call.

    `action` is the polkit action a unix-socket caller needs (None: open to all); TCP callers
    were already judged by the API key before the MCP request was read. A tool without an
    action only reads; `read_only` says so of one that needs an action all the same.
    """

    name: str
    title: str
    description: str
    arguments: type[A]
    run: Callable[[Engine, A], Awaitable[dict[str, Any]]]
    action: Action | None = None
    destructive: bool = False
    idempotent: bool = True
    read_only: bool = False
    # Instead of run, for a tool whose effect is recorded with who asked (exec_command).
    run_as: Callable[[Engine, A, str], Awaitable[dict[str, Any]]] | None = None

    def describe(self) -> types.Tool:
        schema = inline_refs(self.arguments.model_json_schema())
        schema.pop("title", None)
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=schema,
            annotations=types.ToolAnnotations(
                title=self.title,
                read_only_hint=self.action is None or self.read_only,
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                open_world_hint=False,
            ),
        )

    async def call(
        self,
        engine: Engine,
        arguments: Mapping[str, Any],
        authorize: Authorize,
        caller: str = "mcp",
    ) -> dict[str, Any]:
        """Authorise, decode, run; raises VolantError. caller says who asks, for the log."""
        if self.action is not None:
            await authorize(self.action)
        parsed = parse_arguments(self.arguments, arguments)
        if self.run_as is not None:
            return await self.run_as(engine, parsed, caller)
        return await self.run(engine, parsed)


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` written out where they are used: some MCP clients hand tool
    schemas to models that do not follow `$ref`. (The argument models are not recursive.)"""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**walk(defs[ref.removeprefix("#/$defs/")]), **walk(rest)}
        return {key: walk(value) for key, value in node.items()}

    inlined: dict[str, Any] = walk(schema)
    return inlined


def parse_arguments(model: type[A], arguments: Mapping[str, Any]) -> A:
    """Validate tool arguments; the first problem becomes an InvalidArgument naming it."""
    return validate_model(model, arguments, unknown="argument", whole="arguments")


def guest_reply(reply: GuestReplyLike) -> dict[str, Any]:
    """A workload's HTTP answer: its status and content type, and its body as `json` when it
    is JSON, else as `text` when it is UTF-8, else as `base64`."""
    out: dict[str, Any] = {"status": reply.status, "content_type": reply.content_type}
    media = reply.content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return out | {"json": json.loads(reply.body)}
        except ValueError:
            pass  # mislabelled: shown as text below
    try:
        return out | {"text": reply.body.decode()}
    except UnicodeDecodeError:
        return out | {"base64": base64.b64encode(reply.body).decode()}
