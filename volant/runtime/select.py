"""Choosing the hypervisor driver from the `runtime.*` settings."""

from __future__ import annotations

import shutil

from volant.model import InvalidArgument, Unavailable
from volant.runtime.cloudhypervisor import CloudHypervisorDriver
from volant.runtime.qemu import QemuDriver

HYPERVISORS = ("auto", "cloud-hypervisor", "qemu")


def select_driver(
    hypervisor: str,
    *,
    accel: str = "auto",
    machine: str = "auto",
    qemu_binary: str = "qemu-system-x86_64",
    ch_binary: str = "cloud-hypervisor",
    tsc_khz: int | None = None,
) -> CloudHypervisorDriver | QemuDriver:
    """The driver for `runtime.hypervisor`; `auto` prefers Cloud Hypervisor when on PATH.

    Raises InvalidArgument for an unknown value and Unavailable when the binary is missing.
    `accel`, `machine` and `tsc_khz` only concern QEMU (see volant.runtime.qemu).
    """
    if hypervisor not in HYPERVISORS:
        raise InvalidArgument(
            f"unknown hypervisor {hypervisor!r}: expected one of {', '.join(HYPERVISORS)}",
            field="runtime.hypervisor",
        )
    ch_path = shutil.which(ch_binary)
    if hypervisor == "cloud-hypervisor" or (hypervisor == "auto" and ch_path):
        if ch_path is None:
            raise Unavailable(
                f"cloud-hypervisor binary {ch_binary!r} is not on PATH",
                hint="install Cloud Hypervisor, or set runtime.hypervisor = qemu",
            )
        return CloudHypervisorDriver(binary=ch_path)
    qemu_path = shutil.which(qemu_binary)
    if qemu_path is None:
        message = (
            f"neither {ch_binary!r} nor {qemu_binary!r} is on PATH"
            if hypervisor == "auto"
            else f"QEMU binary {qemu_binary!r} is not on PATH"
        )
        raise Unavailable(
            message,
            hint="install qemu-system-x86 (apt install qemu-system-x86) or Cloud Hypervisor",
        )
    return QemuDriver(binary=qemu_path, accel=accel, machine=machine, tsc_khz=tsc_khz)
