"""What every route module shares: typed app keys and JSON body reading."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from volant.engine import Engine
from volant.model import InvalidArgument

from .spec import Api

ENGINE = web.AppKey("engine", Engine)
API = web.AppKey("api", Api)


def engine_of(request: web.Request) -> Engine:
    return request.app[ENGINE]


async def read_json(request: web.Request) -> Any:
    if not request.can_read_body:
        raise InvalidArgument("request body is required")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
