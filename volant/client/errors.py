"""The client's one error type, and how a failed exchange with volantd becomes one.

Every failure a caller can meet is an ApiError with a stable code: the daemon's own
problem+json codes, plus Unreachable (no connection), Timeout, and BadResponse (something
answered that is not volantd, or not what the route promises).
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

UNREACHABLE_HINT = "is volantd running? (systemctl status volantd) Set --api or VOLANT_API_BASE"
SOCKET_GROUP_HINT = (
    "the socket is for root and group volant: `sudo usermod -aG volant $USER` and log in "
    "again, or run volar with sudo"
)
NOT_VOLANTD_HINT = "is --api (or VOLANT_API_BASE) pointing at volantd?"


class ApiError(Exception):
    """The daemon answered with a problem+json error, or could not be reached."""

    def __init__(
        self, status: int, code: str, detail: str, hint: str = "", field: str = ""
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.hint = hint
        self.field = field


def problem(status: int, text: str) -> ApiError:
    """The error an HTTP error answer stands for: its problem+json, else its first words."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        snippet = " ".join(text.split())[:200]
        return ApiError(
            status,
            "HTTPError",
            f"HTTP {status}" + (f": {snippet}" if snippet else ""),
            NOT_VOLANTD_HINT,
        )
    return ApiError(
        status,
        str(body.get("code", "HTTPError")),
        str(body.get("detail") or body.get("title") or f"HTTP {status}"),
        str(body.get("hint") or ""),
        str(body.get("field") or ""),
    )


def bad_response(base: str, what: str) -> ApiError:
    """volantd (or whatever listens at base) answered something a route never sends."""
    return ApiError(0, "BadResponse", f"unexpected answer from {base}: {what}", NOT_VOLANTD_HINT)


def unreachable(base: str, exc: BaseException) -> ApiError:
    """No conversation with the daemon at base: why, in words, and what to try."""
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else None
    hint = UNREACHABLE_HINT
    if isinstance(os_error, PermissionError):
        reason, hint = "permission denied", SOCKET_GROUP_HINT
    elif isinstance(os_error, FileNotFoundError):
        reason = "no such socket"
    elif os_error is not None and os_error.errno:
        # asyncio words a refused TCP connect as "Connect call failed (...)": say it plainly.
        reason = os.strerror(os_error.errno).lower()
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason, hint = "the connection closed before an answer", NOT_VOLANTD_HINT
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    else:
        reason = str(exc) or type(exc).__name__
    return ApiError(0, "Unreachable", f"cannot reach volantd at {base}: {reason}", hint)


def json_object(data: str, what: str) -> dict[str, Any]:
    """data decoded as a JSON object; BadResponse otherwise."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(0, "BadResponse", f"volantd sent a {what} that is not a JSON object")
    return value
