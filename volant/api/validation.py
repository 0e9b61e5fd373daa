"""What the front-ends that validate with pydantic (REST, MCP) share: one way to report it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from volant.model import InvalidArgument

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
