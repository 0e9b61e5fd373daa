"""The one error tree, and the one table mapping each stable code to its wire forms."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Self


class ErrorCode(StrEnum):
    """Stable error codes; clients may switch on these."""

    INVALID_ARGUMENT = "InvalidArgument"
    NOT_FOUND = "NotFound"
    PERMISSION_DENIED = "PermissionDenied"
    UNAUTHENTICATED = "Unauthenticated"
    TOO_LARGE = "TooLarge"
    NAME_TAKEN = "NameTaken"
    POOL_EXHAUSTED = "PoolExhausted"
    INVALID_STATE = "InvalidState"
    CONFLICT = "Conflict"
    SIGNATURE_INVALID = "SignatureInvalid"
    HYPERVISOR_FAILED = "HypervisorFailed"
    DOWNLOAD_FAILED = "DownloadFailed"
    UNAVAILABLE = "Unavailable"
    INSUFFICIENT_STORAGE = "InsufficientStorage"
    INTERNAL = "Internal"


@dataclass(frozen=True)
class _Row:
    http_status: int
    title: str


_ROWS: dict[ErrorCode, _Row] = {
    ErrorCode.INVALID_ARGUMENT: _Row(400, "Invalid argument"),
    ErrorCode.NOT_FOUND: _Row(404, "Not found"),
    ErrorCode.PERMISSION_DENIED: _Row(403, "Permission denied"),
    # The REST API's key is missing or wrong (D-Bus callers are judged by polkit instead).
    ErrorCode.UNAUTHENTICATED: _Row(401, "API key required"),
    ErrorCode.TOO_LARGE: _Row(413, "Request too large"),
    ErrorCode.NAME_TAKEN: _Row(409, "Name already taken"),
    ErrorCode.POOL_EXHAUSTED: _Row(409, "IP address pool exhausted"),
    ErrorCode.INVALID_STATE: _Row(409, "Operation not allowed in the current state"),
    ErrorCode.CONFLICT: _Row(409, "Conflict"),
    # 403, not 400: the request is well formed, but the host's trust policy refuses the content
    # (unsigned while signatures are required, tampered, or signed by a key it does not trust).
    # The problem type and D-Bus name tell it apart from PermissionDenied (polkit said no).
    ErrorCode.SIGNATURE_INVALID: _Row(403, "Plugin signature not accepted"),
    ErrorCode.HYPERVISOR_FAILED: _Row(502, "Hypervisor failed"),
    # 502 like HypervisorFailed: volantd is fine, but a server it fetched from on the caller's
    # behalf did not deliver (error status, refused connection, timeout).
    ErrorCode.DOWNLOAD_FAILED: _Row(502, "Download failed"),
    ErrorCode.UNAVAILABLE: _Row(503, "Service unavailable"),
    # RFC 4918's 507: the host has no room to write what the request needs (state database,
    # artifact cache, run directory); the request changed nothing and may be retried once
    # space is freed.
    ErrorCode.INSUFFICIENT_STORAGE: _Row(507, "Insufficient storage"),
    ErrorCode.INTERNAL: _Row(500, "Internal error"),
}

PROBLEM_TYPE_BASE = "https://volantvm.com/problems/"
DBUS_ERROR_PREFIX = "com.volantvm.Volant1.Error."


@dataclass(frozen=True)
class WireForms:
    """HTTP status, RFC 9457 problem type and D-Bus error name of one code."""

    code: ErrorCode
    http_status: int
    title: str
    problem_type: str
    dbus_name: str


ERROR_TABLE: dict[ErrorCode, WireForms] = {
    code: WireForms(
        code=code,
        http_status=row.http_status,
        title=row.title,
        problem_type=PROBLEM_TYPE_BASE + code.value,
        dbus_name=DBUS_ERROR_PREFIX + code.value,
    )
    for code, row in _ROWS.items()
}


class VolantError(Exception):
    """Base of every error Volant reports to a caller."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, hint: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field

    @property
    def wire(self) -> WireForms:
        return ERROR_TABLE[self.code]


class InvalidArgument(VolantError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(VolantError):
    code = ErrorCode.NOT_FOUND


class PermissionDenied(VolantError):
    """The caller is not authorised for the action (polkit said no)."""

    code = ErrorCode.PERMISSION_DENIED


class Unauthenticated(VolantError):
    """The REST caller gave no API key, or a wrong one."""

    code = ErrorCode.UNAUTHENTICATED


class TooLarge(VolantError):
    code = ErrorCode.TOO_LARGE


class Conflict(VolantError):
    code = ErrorCode.CONFLICT


class NameTaken(Conflict):
    code = ErrorCode.NAME_TAKEN


class PoolExhausted(Conflict):
    code = ErrorCode.POOL_EXHAUSTED


class InvalidState(Conflict):
    code = ErrorCode.INVALID_STATE


class SignatureInvalid(VolantError):
    """A plugin manifest's signature is missing where required, wrong, or by an untrusted key."""

    code = ErrorCode.SIGNATURE_INVALID


class HypervisorFailed(VolantError):
    code = ErrorCode.HYPERVISOR_FAILED


class DownloadFailed(VolantError):
    """A plugin or artifact download did not complete: HTTP error, connection failure, timeout."""

    code = ErrorCode.DOWNLOAD_FAILED


class Unavailable(VolantError):
    code = ErrorCode.UNAVAILABLE


class StateCorrupt(Unavailable):
    """The state database fails its integrity check; volantd refuses to run on it."""


class InsufficientStorage(VolantError):
    """A write on the host failed for want of space: ENOSPC, EDQUOT, SQLite's SQLITE_FULL."""

    code = ErrorCode.INSUFFICIENT_STORAGE

    @classmethod
    def at(cls, where: Path, what: str, reason: str = "no space left on device") -> Self:
        """`what: reason (where)`, with a hint that names the filesystem to free."""
        return cls(
            f"{what}: {reason} ({where})",
            hint=f"free space on the filesystem of {where} (`df -h {where}`), then try again",
        )


class InternalError(VolantError):
    code = ErrorCode.INTERNAL


ERROR_CLASSES: dict[ErrorCode, type[VolantError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        TooLarge,
        Conflict,
        NameTaken,
        PoolExhausted,
        InvalidState,
        SignatureInvalid,
        HypervisorFailed,
        DownloadFailed,
        Unavailable,
        InsufficientStorage,
        InternalError,
    )
}

# Errors of a write that found no room: out of blocks or inodes, or over a quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def disk_full_as_error(where: Path, what: str) -> Iterator[None]:
    """Turn an OSError of a full disk inside into InsufficientStorage. what says which write
    failed ("cannot write the config disk of VM web"); where is the directory written to,
    unless the error names its file."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        if isinstance(exc.filename, str) and exc.filename:
            where = Path(exc.filename).parent
        raise InsufficientStorage.at(where, what, os.strerror(exc.errno).lower()) from exc
