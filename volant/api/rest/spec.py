"""One declaration per route: it registers the handler and describes the route in OpenAPI 3.1.

The request models that handlers validate with (pydantic) are the ones the document is built
from, so the document cannot drift from what the server accepts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from volant.model.validate import DNS_LABEL
from volant.model.volumes import VOLUME_NAME_PATTERN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{model}"

# What each path parameter may be; a value outside it never reaches the engine.
PATH_PARAMS: Mapping[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": DNS_LABEL, "description": "VM name (a DNS label)"},
    "plugin": {"type": "string", "pattern": DNS_LABEL, "description": "Plugin name"},
    "action": {"type": "string", "minLength": 1, "description": "Action name in the manifest"},
    "build": {"type": "string", "pattern": "^[0-9a-f]{12}$", "description": "Build id"},
    "operation": {
        "type": "string",
        "minLength": 1,
        "description": "An operationId of the workload's OpenAPI document, or METHOD:/path",
    },
    "path": {"type": "string", "description": "The workload's path under its base_url ('/' ..)"},
    "volume": {
        "type": "string",
        "pattern": VOLUME_NAME_PATTERN,
        "description": "Volume name (a DNS label of at most 20 characters)",
    },
}

# Statuses any route can answer with, whatever it does: access control, limits, bugs.
COMMON_ERRORS: Mapping[int, str] = {
    401: "API key missing or wrong",
    403: "Caller not allowed (address, polkit)",
    413: "Request body too large",
    500: "Internal error",
}
ERROR_TEXT: Mapping[int, str] = {
    **COMMON_ERRORS,
    400: "Invalid argument",
    404: "Not found",
    409: "Conflict with the current state",
    422: "Unprocessable",
    502: "Upstream (guest, download) failed",
    503: "Unavailable",
    504: "Upstream timed out",
    507: "No space left on the host for the change",
}


@dataclass(frozen=True)
class Body:
    """A response body: a pydantic model as JSON, or another media type with a free schema."""

    model: type[BaseModel] | None = None
    media: str = JSON
    schema: Mapping[str, Any] | None = None


Bodies = Body | tuple[Body, ...] | None


def _bodies(bodies: Bodies) -> tuple[Body, ...]:
    if bodies is None:
        return ()
    return bodies if isinstance(bodies, tuple) else (bodies,)


@dataclass(frozen=True)
class Header:
    """A request header a route reads, documented as an optional OpenAPI header parameter."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    headers: tuple[Header, ...] = ()
    body: type[BaseModel] | None = None
    body_media: tuple[str, ...] = ()
    responses: Mapping[int, tuple[str, Bodies]] = field(default_factory=dict)
    default: tuple[str, Bodies] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    stream: bool = False

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


class Api:
    """The routes of one app, in the order they are added (aiohttp matches in that order)."""

    def __init__(self, *, title: str, description: str) -> None:
        self.title = title
        self.description = description
        self.operations: list[Operation] = []
        self._by_name: dict[str, Operation] = {}
        self._document: dict[str, Any] | None = None

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        summary: str,
        tag: str,
        ok: Mapping[int, tuple[str, Bodies]],
        default: tuple[str, Bodies] | None = None,
        query: type[BaseModel] | None = None,
        headers: tuple[Header, ...] = (),
        body: type[BaseModel] | None = None,
        body_media: tuple[str, ...] = (),
        errors: tuple[int, ...] = (),
        public: bool = False,
        stream: bool = False,
        operation_id: str = "",
    ) -> None:
        """Declare one route. `ok` maps success statuses to (description, body or None);
        `errors` lists the problem+json statuses the route itself can answer with.
        The operation id is the handler's name unless one handler serves several routes."""
        op = Operation(
            method=method.upper(),
            path=path,
            handler=handler,
            operation_id=operation_id or handler.__name__,
            summary=summary,
            tag=tag,
            query=query,
            headers=headers,
            body=body,
            body_media=body_media,
            responses=ok,
            default=default,
            errors=errors,
            public=public,
            stream=stream,
        )
        if op.operation_id in self._by_name:
            raise ValueError(f"two routes named {op.operation_id}")
        self._by_name[op.operation_id] = op
        self.operations.append(op)

    def register(self, router: web.UrlDispatcher) -> None:
        for op in self.operations:
            # A `{path}` parameter is the rest of the URL, slashes included.
            path = op.path.replace("{path}", "{path:.*}")
            router.add_route(op.method, path, op.handler, name=op.operation_id)

    def operation_of(self, request: web.Request) -> Operation | None:
        """The declared operation a routed request matched; None for 404s and 405s."""
        route = request.match_info.route
        name = route.name if route.resource is not None else None
        return self._by_name.get(name) if name else None

    def openapi(self, *, version: str) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every declared route (built once, then reused)."""
        if self._document is None or self._document["info"]["version"] != version:
            self._document = self._build(version)
        return self._document

    def _build(self, version: str) -> dict[str, Any]:
        models = self._models()
        refs, defs = models_json_schema(
            [(model, "validation") for model in models], ref_template=REF
        )
        schemas: dict[str, Any] = dict(defs.get("$defs", {}))
        for (model, _mode), ref in refs.items():
            schemas.setdefault(model.__name__, ref)
        schemas["Problem"] = PROBLEM_SCHEMA
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": version, "description": self.description},
            "servers": [{"url": "/"}],
            "paths": paths,
            "components": {
                "schemas": dict(sorted(schemas.items())),
                "securitySchemes": {
                    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Volant-API-Key"},
                    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
                },
            },
            "security": [{}, {"apiKeyHeader": []}, {"apiKeyQuery": []}],
        }

    def _models(self) -> list[type[BaseModel]]:
        seen: dict[str, type[BaseModel]] = {}
        for op in self.operations:
            answers = [*op.responses.values(), *([op.default] if op.default else [])]
            candidates = [op.body, op.query]
            candidates += [b.model for _d, bs in answers for b in _bodies(bs)]
            for model in candidates:
                if model is not None:
                    seen.setdefault(model.__name__, model)
        return list(seen.values())


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is Volant's stable error code.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "field": {"type": "string"},
        "hint": {"type": "string"},
    },
}


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(op),
        "responses": _responses(op),
    }
    if op.public:
        doc["security"] = [{}]
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model=op.body.__name__)}}},
        }
    elif op.body_media:
        doc["requestBody"] = {
            "required": False,
            "content": {media: {"schema": {}} for media in op.body_media},
        }
    return doc


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": dict(PATH_PARAMS[name])}
        for name in op.path_params
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", ()))
        for name, raw in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            description = raw.pop("description", None)
            raw.pop("title", None)
            if description:
                param["description"] = description
            param["schema"] = _not_null(raw)
            params.append(param)
    params += [
        {
            "name": header.name,
            "in": "header",
            "required": False,
            "description": header.description,
            "schema": dict(header.schema),
        }
        for header in op.headers
    ]
    return params


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter is absent, never null: drop the null branch pydantic adds."""
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) != 1 or len(schema["anyOf"]) != 2:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if schema.get("default") is not None:
        rest["default"] = schema["default"]
    return {**branches[0], **rest}


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): _response(description, bodies)
        for status, (description, bodies) in op.responses.items()
    }
    errors = {status: ERROR_TEXT[status] for status in op.errors}
    if op.query is not None or op.body is not None or op.path_params:
        errors.setdefault(400, ERROR_TEXT[400])
    for status, text in {**errors, **COMMON_ERRORS}.items():
        if op.public and status in (401, 403):
            continue
        responses[str(status)] = {
            "description": text,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    if op.default is not None:
        responses["default"] = _response(*op.default)
    return dict(sorted(responses.items()))


def _response(description: str, bodies: Bodies) -> dict[str, Any]:
    entry: dict[str, Any] = {"description": description}
    content: dict[str, Any] = {}
    for body in _bodies(bodies):
        schema = (
            {"$ref": REF.format(model=body.model.__name__)}
            if body.model is not None
            else dict(body.schema or {})
        )
        content[body.media] = {"schema": schema}
    if content:
        entry["content"] = content
    return entry
