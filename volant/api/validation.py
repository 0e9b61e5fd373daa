"""What the front-ends that validate with pydantic (REST, MCP) share: one way to report it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError, WithJsonSchema

from volant.model import InvalidArgument
from volant.model.volumes import MAX_SIZE, MIN_SIZE, SIZE_PATTERN, SIZE_RULE, format_size

M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: Mapping[str, Any], *, unknown: str, whole: str) -> M:
    """data as a model; its first problem becomes an InvalidArgument naming the field.

    `unknown` names what an extra key is ("field", "argument"); `whole` names the thing itself
    when the problem is not in one of its keys."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or whole
        if first["type"] == "extra_forbidden":
            message = f"unknown {unknown} {where!r}"
        else:
            message = f"{where}: {first['msg']}"
        raise InvalidArgument(message, field=where) from exc


def _size(value: Any) -> int | str:
    """An integer or a text: which sizes are allowed is parse_size's to say, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        # pydantic reports a ValueError as the field's problem (a TypeError would escape it).
        raise ValueError(f"must be {SIZE_RULE}")  # noqa: TRY004
    return value


Size = Annotated[
    int | str,
    BeforeValidator(_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "description": f"Size: {SIZE_RULE}; rounded up to a whole MiB, "
            f"from {format_size(MIN_SIZE)} to {format_size(MAX_SIZE)}",
        }
    ),
]
"""A volume's size as REST and MCP take it."""
