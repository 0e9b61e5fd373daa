"""Hypervisor launchers (QEMU, Cloud Hypervisor) and the guest kernel command line.

Drivers satisfy volant.engine.ports.HypervisorDriver structurally; this package imports only
volant.model, volant.config and third-party libraries.
"""

from volant.runtime.cloudhypervisor import (
    CloudHypervisorAPI,
    CloudHypervisorAPIError,
    CloudHypervisorDriver,
    CloudHypervisorUnreachable,
    CloudHypervisorVM,
)
from volant.runtime.cmdline import build_cmdline, decode_manifest, encode_manifest, ip_arg
from volant.runtime.qemu import QemuDriver, QemuHypervisor, host_tsc_khz
from volant.runtime.select import select_driver

__all__ = [
    "CloudHypervisorAPI",
    "CloudHypervisorAPIError",
    "CloudHypervisorDriver",
    "CloudHypervisorUnreachable",
    "CloudHypervisorVM",
    "QemuDriver",
    "QemuHypervisor",
    "build_cmdline",
    "decode_manifest",
    "encode_manifest",
    "host_tsc_khz",
    "ip_arg",
    "select_driver",
]
