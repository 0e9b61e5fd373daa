"""Fixtures for tests that need a real systemd: a sandbox booted per test module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.sysbox import Sysbox
from scripts.volantbox import VolantBox
from tests.integration.daemon import GUEST_DIR, build_guest


def sysbox_unavailable() -> str:
    """Why a sandbox cannot boot on this machine, or "" when it can."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "util-linux unshare/nsenter missing"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed"
    return ""


@pytest.fixture(scope="module")
def sysbox() -> Iterator[Sysbox]:
    """A booted systemd (running or degraded), torn down after the module's tests."""
    reason = sysbox_unavailable()
    if reason:
        pytest.skip(reason)
    with Sysbox() as box:
        yield box


@pytest.fixture(scope="module")
def volantd(sysbox: Sysbox) -> Iterator[VolantBox]:
    """volantd.service with the test settings and the demo plugin (modules that need other
    settings define their own)."""
    if not (GUEST_DIR / "vmlinuz").exists() or not (GUEST_DIR / "initramfs.img").exists():
        build_guest()
    vb = VolantBox(sysbox)
    vb.install()
    yield vb
    vb.run("systemctl", "stop", "volantd")
