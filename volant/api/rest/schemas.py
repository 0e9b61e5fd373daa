"""Request bodies: pydantic models that reject unknown fields and loose types."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from volant.model import InvalidArgument

M = TypeVar("M", bound=BaseModel)


class CreateVMRequest(BaseModel):
    """POST /api/v1/vms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    plugin: StrictStr = ""
    cpu_cores: StrictInt | None = None
    memory_mb: StrictInt | None = None
    kernel_args: StrictStr = ""


class InstallPluginRequest(BaseModel):
    """POST /api/v1/plugins: the manifest text (JSON or YAML) or a URL to fetch it from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: StrictStr = ""
    url: StrictStr = ""
    signature: StrictStr | None = None
    origin: StrictStr = ""
    replace: StrictBool = False


def parse_body(model: type[M], body: Any) -> M:
    """Validate a decoded JSON body; the first problem becomes an InvalidArgument naming it."""
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            message = f"unknown field {where!r}"
        else:
            message = f"{where}: {first['msg']}"
        raise InvalidArgument(message, field=where) from exc
