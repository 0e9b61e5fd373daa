"""The guest kernel command line: what Volant tells the guest, within the x86 size limit."""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from volant.model import InvalidArgument, NetworkMode
from volant.model.validate import CMDLINE_MAX, validate_kernel_args

BASE_ARGS = ("console=ttyS0", "reboot=k", "panic=1")
# Read by the guest's /init (scripts/guest/boot.sh, volant_console_shell).
SHELL_ARG = "volant.shell=1"
_TOKEN_RE = re.compile(r"[!-~]*")  # printable ASCII, no space


def encode_manifest(manifest: Mapping[str, Any]) -> str:
    """base64url(gzip(compact JSON)) without padding: the value of `volant.manifest=`.

    Deterministic (sorted keys, gzip mtime 0) so that equal manifests give equal command lines.
    """
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return base64.urlsafe_b64encode(packed).decode().rstrip("=")


def decode_manifest(value: str) -> dict[str, Any]:
    """Inverse of encode_manifest (the guest agent carries its own copy of this logic)."""
    try:
        packed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        decoded = json.loads(gzip.decompress(packed))
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidArgument(f"volant.manifest is not valid: {exc}", field="manifest") from exc
    if not isinstance(decoded, dict):
        raise InvalidArgument("volant.manifest does not hold a JSON object", field="manifest")
    return decoded


def ip_arg(
    mode: NetworkMode,
    name: str,
    *,
    ip: str | None = None,
    gateway: str | None = None,
    netmask: str | None = None,
) -> str | None:
    """The `ip=` argument in the kernel's nfsroot syntax, or None when the guest has no NIC.

    bridged: `ip=<ip>::<gw>:<mask>:<name>:eth0:off` (static); dhcp: `ip=::::<name>:eth0:dhcp`
    (the guest asks and still learns its hostname); vsock: no tap, so no `ip=`.
    """
    if mode is NetworkMode.VSOCK:
        return None
    if mode is NetworkMode.DHCP:
        return f"ip=::::{name}:eth0:dhcp"
    if ip is None or netmask is None:
        raise InvalidArgument("bridged networking needs an IP address and a netmask", field="ip")
    try:
        address = IPv4Address(ip)
        mask = IPv4Network(f"0.0.0.0/{netmask}").netmask
        gw = IPv4Address(gateway) if gateway else None
    except ValueError as exc:
        raise InvalidArgument(f"invalid guest network settings: {exc}", field="ip") from exc
    return f"ip={address}::{gw or ''}:{mask}:{name}:eth0:off"


def build_cmdline(
    *,
    name: str,
    runtime: str,
    plugin: str,
    ip: str | None = None,
    gateway: str | None = None,
    netmask: str | None = None,
    mode: NetworkMode | None = None,
    manifest: str | None = None,
    hypervisor_extras: Sequence[str] = (),
    console_shell: bool = False,
    domain: str = "",
    extra: str = "",
) -> str:
    """Assemble the full command line and refuse it when it exceeds the x86 limit.

    `mode` defaults to bridged when `ip` is given and to dhcp when it is None. `manifest` is an
    already encoded value (see encode_manifest); `hypervisor_extras` are the arguments the driver
    needs (its kernel_extras()); `console_shell` asks the guest's init for a root shell on
    ttyS0 (`volant.shell=1`); `domain` is the guests' DNS domain (`volant.domain=`, the
    search domain in the guest's /etc/resolv.conf); `extra` holds the VM's own kernel arguments.
    Raises InvalidArgument when the result is longer than 2047 characters, because the guest
    kernel panics on such a line and neither hypervisor refuses it.
    """
    for label, value in (
        ("name", name),
        ("runtime", runtime),
        ("plugin", plugin),
        ("domain", domain),
    ):
        if not _TOKEN_RE.fullmatch(value):
            raise InvalidArgument(f"{label} {value!r} cannot go on a kernel command line")
    if mode is None:
        mode = NetworkMode.DHCP if ip is None else NetworkMode.BRIDGED
    parts = list(BASE_ARGS)
    network = ip_arg(mode, name, ip=ip, gateway=gateway, netmask=netmask)
    if network is not None:
        parts.append(network)
    parts += [f"volant.runtime={runtime}", f"volant.plugin={plugin}"]
    if manifest is not None:
        if not manifest or not _TOKEN_RE.fullmatch(manifest):
            raise InvalidArgument("encoded manifest must be base64url text", field="manifest")
        parts.append(f"volant.manifest={manifest}")
    for arg in hypervisor_extras:
        if not arg or not _TOKEN_RE.fullmatch(arg):
            raise InvalidArgument(f"hypervisor kernel argument {arg!r} is not one token")
        parts.append(arg)
    if console_shell:
        parts.append(SHELL_ARG)
    if domain:
        parts.append(f"volant.domain={domain}")
    user = validate_kernel_args(extra)
    if user:
        parts.append(user)
    line = " ".join(parts)
    if len(line) > CMDLINE_MAX:
        raise InvalidArgument(
            f"kernel command line is {len(line)} characters; x86 guests take at most "
            f"{CMDLINE_MAX} (a longer one panics the guest kernel)",
            hint="shorten kernel_args, or ship the manifest on a config disk",
            field="kernel_args",
        )
    return line
