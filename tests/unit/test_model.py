from __future__ import annotations

import errno
from pathlib import Path

import pytest

from volant.model import (
    ERROR_TABLE,
    ErrorCode,
    InsufficientStorage,
    InvalidArgument,
    ScopeLimits,
    disk_full_as_error,
)
from volant.model.errors import ERROR_CLASSES
from volant.model.validate import validate_kernel_args, validate_name, validate_range

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["a", "web", "web-1", "0abc", "a" * 63])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "A", "web_1", "a" * 64, "a.b", "a b", "é", "web\n", "../x"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="DNS label"):
        validate_name(name)


@pytest.mark.parametrize("value", [0, 33, -1, True, "2", 1.5])
def test_range_rejects(value: object) -> None:
    with pytest.raises(InvalidArgument, match="cpu_cores"):
        validate_range("cpu_cores", value, 1, 32)  # type: ignore[arg-type]


def test_kernel_args_normalised() -> None:
    assert validate_kernel_args("  quiet   loglevel=3 ") == "quiet loglevel=3"


@pytest.mark.parametrize(
    "args", ["volant.plugin=x", "ip=1.2.3.4", "init=/bin/sh", "quiet\x00", "a\nb", "ünï"]
)
def test_kernel_args_refused(args: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_kernel_args(args)


def test_every_code_has_wire_forms() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)
    assert set(ERROR_CLASSES) == set(ErrorCode)
    for code, wire in ERROR_TABLE.items():
        assert wire.dbus_name == f"com.volantvm.Volant1.Error.{code.value}"
        assert 400 <= wire.http_status < 600
    assert ERROR_TABLE[ErrorCode.NAME_TAKEN].http_status == 409
    assert ERROR_TABLE[ErrorCode.INVALID_ARGUMENT].http_status == 400
    assert ERROR_TABLE[ErrorCode.DOWNLOAD_FAILED].http_status == 502
    assert ERROR_TABLE[ErrorCode.DOWNLOAD_FAILED].title == "Download failed"
    assert ERROR_TABLE[ErrorCode.INSUFFICIENT_STORAGE].http_status == 507


def test_a_full_disk_becomes_insufficient_storage() -> None:
    with (
        pytest.raises(InsufficientStorage) as caught,
        disk_full_as_error(Path("/srv"), "cannot write the config disk of VM web"),
    ):
        raise OSError(errno.ENOSPC, "No space left on device", "/run/volant/vms/web/config.img")
    # The directory of the file the error names, else the one given.
    assert caught.value.message == (
        "cannot write the config disk of VM web: no space left on device (/run/volant/vms/web)"
    )
    assert caught.value.hint == (
        "free space on the filesystem of /run/volant/vms/web (`df -h /run/volant/vms/web`), "
        "then try again"
    )
    quota = pytest.raises(InsufficientStorage, match=r"disk quota exceeded \(/srv\)")
    with quota, disk_full_as_error(Path("/srv"), "w"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError), disk_full_as_error(Path("/srv"), "w"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_scope_limits() -> None:
    limits = ScopeLimits(cpus=2, memory_mb=512)
    assert limits.cpu_quota_percent == 200
    assert limits.memory_max_bytes == (512 + 128) * 1024 * 1024
    assert ScopeLimits(cpus=1, memory_mb=128).memory_max_bytes == (128 + 64) * 1024 * 1024
