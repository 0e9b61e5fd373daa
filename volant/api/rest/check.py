"""`api.check_openapi`: every answer is checked against the OpenAPI document it claims to follow.

On in every test tier, so each request a test makes (through volar, the client, curl or
schemathesis) also checks the document: an undocumented status or content type, or a JSON body
that breaks its schema, becomes a 500 that names the mismatch, and the test fails.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jsonschema
from aiohttp import web

from volant.model import ErrorCode

from .common import API, engine_of
from .problem import problem
from .spec import Handler, Operation

log = logging.getLogger(__name__)


def mismatch(document: dict[str, Any], op: Operation, response: web.StreamResponse) -> str:
    """What is wrong with response as an answer of op; empty when nothing is."""
    answers = document["paths"][op.path][op.method.lower()]["responses"]
    media = response.content_type
    # After a WebSocket upgrade (101) the frames are no HTTP body.
    upgraded = isinstance(response, web.WebSocketResponse)
    has_body = not upgraded and (not isinstance(response, web.Response) or bool(response.body))
    found = _declared(answers, str(response.status), media, has_body)
    if isinstance(found, str):
        return found
    if found is None or not isinstance(response, web.Response) or not media.endswith("json"):
        return ""
    raw = response.body
    try:
        body = json.loads(raw if isinstance(raw, bytes | bytearray) else b"null")
    except ValueError as exc:
        return f"body is not JSON: {exc}"
    schema = {**found, "components": document["components"]}
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(body)
    )
    if error is None:
        return ""
    where = "/".join(str(part) for part in error.absolute_path) or "(body)"
    return f"body at {where}: {error.message}"


def _declared(
    answers: dict[str, Any], status: str, media: str, has_body: bool
) -> dict[str, Any] | str | None:
    """The schema documented for this answer, None when it has no body to check, or the
    mismatch as text. A passthrough route's `default` covers whatever the workload said."""
    for key in (status, "default"):
        content = answers.get(key, {}).get("content")
        if key not in answers:
            continue
        if not content:
            if not has_body:
                return None
            continue
        if media in content:
            schema: dict[str, Any] = content[media]["schema"]
            return schema
        if "*/*" in content:
            return None
    if status not in answers and "default" not in answers:
        return f"status {status} is not documented"
    return f"{media or 'no body'} is not a documented answer for status {status}"


@web.middleware
async def openapi_check_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    engine = engine_of(request)
    op = request.app[API].operation_of(request)
    if op is None or not engine.config.api_check_openapi:
        return response
    document = request.app[API].openapi(version=engine.version)
    wrong = mismatch(document, op, response)
    if not wrong or response.prepared:
        if wrong:
            log.error("%s %s broke the OpenAPI document: %s", request.method, request.path, wrong)
        return response
    log.error("%s %s broke the OpenAPI document: %s", request.method, request.path, wrong)
    return problem(500, ErrorCode.INTERNAL, f"answer breaks the OpenAPI document: {wrong}")
