"""Every failure leaves as RFC 9457 problem+json, with the HTTP status of its error code."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from volant.model import ERROR_TABLE, ErrorCode, VolantError

from .common import ENGINE
from .spec import PROBLEM, Handler

log = logging.getLogger(__name__)

# aiohttp's own refusals (routing, limits) as Volant error codes.
HTTP_CODES = {
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.TOO_LARGE,
}


def problem(status: int, code: ErrorCode, detail: str, **extra: Any) -> web.Response:
    wire = ERROR_TABLE[code]
    body = {
        "type": wire.problem_type,
        "title": wire.title,
        "status": status,
        "detail": detail,
        "code": code.value,
        **{k: v for k, v in extra.items() if v},
    }
    return web.json_response(body, status=status, content_type=PROBLEM)


def count(request: web.Request, code: ErrorCode) -> None:
    request.app[ENGINE].telemetry.error("rest", code.value)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VolantError as exc:
        wire = exc.wire
        count(request, exc.code)
        return problem(wire.http_status, exc.code, exc.message, field=exc.field, hint=exc.hint)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, ErrorCode.INVALID_ARGUMENT)
        count(request, code)
        detail = exc.text if exc.status == 413 and exc.text else exc.reason
        answer = problem(exc.status, code, detail)
        if "Allow" in exc.headers:  # a 405 names the methods that would work (RFC 9110)
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        count(request, ErrorCode.INTERNAL)
        return problem(500, ErrorCode.INTERNAL, "internal error; see the volantd journal")
