"""One D-Bus error class per ErrorCode, bound to the name in ERROR_TABLE.

sdbus registers each `DbusFailedError` subclass under its `dbus_error_name`: a server raising one
replies with that name, and a client proxy receiving that name raises the same class back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import ClassVar

from sdbus import DbusFailedError

from volant.engine.telemetry import Telemetry
from volant.model import ERROR_CLASSES, ERROR_TABLE, ErrorCode, VolantError

log = logging.getLogger(__name__)


class VolantDbusError(DbusFailedError):
    """Base of Volant's D-Bus errors; `code` is the stable ErrorCode."""

    dbus_error_name = "com.volantvm.Volant1.Error"
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


def _name(code: ErrorCode) -> str:
    return ERROR_TABLE[code].dbus_name


class InvalidArgumentError(VolantDbusError):
    code = ErrorCode.INVALID_ARGUMENT
    dbus_error_name = _name(code)


class NotFoundError(VolantDbusError):
    code = ErrorCode.NOT_FOUND
    dbus_error_name = _name(code)


class PermissionDeniedError(VolantDbusError):
    code = ErrorCode.PERMISSION_DENIED
    dbus_error_name = _name(code)


class UnauthenticatedError(VolantDbusError):
    code = ErrorCode.UNAUTHENTICATED
    dbus_error_name = _name(code)


class TooLargeError(VolantDbusError):
    code = ErrorCode.TOO_LARGE
    dbus_error_name = _name(code)


class NameTakenError(VolantDbusError):
    code = ErrorCode.NAME_TAKEN
    dbus_error_name = _name(code)


class PoolExhaustedError(VolantDbusError):
    code = ErrorCode.POOL_EXHAUSTED
    dbus_error_name = _name(code)


class InvalidStateError(VolantDbusError):
    code = ErrorCode.INVALID_STATE
    dbus_error_name = _name(code)


class ConflictError(VolantDbusError):
    code = ErrorCode.CONFLICT
    dbus_error_name = _name(code)


class SignatureInvalidError(VolantDbusError):
    code = ErrorCode.SIGNATURE_INVALID
    dbus_error_name = _name(code)


class HypervisorFailedError(VolantDbusError):
    code = ErrorCode.HYPERVISOR_FAILED
    dbus_error_name = _name(code)


class DownloadFailedError(VolantDbusError):
    code = ErrorCode.DOWNLOAD_FAILED
    dbus_error_name = _name(code)


class UnavailableError(VolantDbusError):
    code = ErrorCode.UNAVAILABLE
    dbus_error_name = _name(code)


class InsufficientStorageError(VolantDbusError):
    code = ErrorCode.INSUFFICIENT_STORAGE
    dbus_error_name = _name(code)


class InternalDbusError(VolantDbusError):
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    dbus_error_name = _name(code)


DBUS_ERRORS: dict[ErrorCode, type[VolantDbusError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        UnauthenticatedError,
        TooLargeError,
        NameTakenError,
        PoolExhaustedError,
        InvalidStateError,
        ConflictError,
        SignatureInvalidError,
        HypervisorFailedError,
        DownloadFailedError,
        UnavailableError,
        InsufficientStorageError,
        InternalDbusError,
    )
}


def to_dbus(exc: VolantError) -> VolantDbusError:
    """The D-Bus error for a domain error; the message carries the hint after a newline."""
    text = f"{exc.message}\n{exc.hint}" if exc.hint else exc.message
    return DBUS_ERRORS[exc.code](text)


def from_dbus(exc: VolantDbusError) -> VolantError:
    """The domain error a client proxy's D-Bus error stands for."""
    text = str(exc.args[0]) if exc.args else ""
    message, _, hint = text.partition("\n")
    return ERROR_CLASSES[exc.code](message, hint=hint)


@contextlib.contextmanager
def dbus_errors(telemetry: Telemetry | None = None) -> Iterator[None]:
    """Turn domain errors into their D-Bus errors; anything unexpected into Internal. Each is
    counted in telemetry (the volant_api_errors metric) when given."""
    try:
        yield
    except VolantError as exc:
        if telemetry is not None:
            telemetry.error("dbus", exc.code.value)
        raise to_dbus(exc) from exc
    except DbusFailedError:
        raise
    except Exception as exc:
        if telemetry is not None:
            telemetry.error("dbus", ErrorCode.INTERNAL.value)
        log.exception("unhandled error in a D-Bus call")
        raise InternalDbusError("internal error; see the volantd journal") from exc
