"""skopeo: read a source's manifest and config, copy an image into the cache, name failures."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volant.model import DownloadFailed, VolantError
from volant.storage.errors import (
    ImageCorrupt,
    ImageNotFound,
    RegistryDenied,
    RegistryUnreachable,
    ToolFailed,
)
from volant.storage.reference import ImageRef
from volant.storage.tools import Finished, raise_if_no_space, run

DEFAULT_TIMEOUT = 1800.0
_PARSING = re.compile(r'^Error parsing image name "[^"]*": ')

_CORRUPT = ("digest did not match", "invalid checksum", "unexpected eof", "invalid tar header")
_TLS = ("x509:", "certificate", "tls:", "server gave http response to https client")
_DENIED = ("unauthorized", "authentication required", "requested access to the resource is denied")
_NOT_FOUND = (
    "manifest unknown",
    "name unknown",
    "not found",
    "no descriptor found",
    "no such file or directory",
)
_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "context deadline exceeded",
    "connection reset",
    "no route to host",
    "pinging container registry",
)


@dataclass(frozen=True)
class Access:
    """How to reach a registry: an auth file (containers-auth.json(5)), a directory of CA
    certificates and client keys (skopeo's --cert-dir), and a time limit for one skopeo run.
    TLS is always verified; a registry with a private CA needs cert_dir or
    /etc/containers/certs.d/HOST/."""

    authfile: Path | None = None
    cert_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    def flags(self, prefix: str = "") -> list[str]:
        argv = []
        if self.authfile is not None:
            argv.append(f"--{prefix}authfile={self.authfile}")
        if self.cert_dir is not None:
            argv.append(f"--{prefix}cert-dir={self.cert_dir}")
        return argv


def _skopeo(access: Access, *argv: str) -> list[str]:
    return ["skopeo", f"--command-timeout={int(access.timeout)}s", *argv]


async def inspect_raw(ref: ImageRef, access: Access) -> bytes:
    """The manifest (or image index) exactly as the source serves it."""
    done = await run(_skopeo(access, "inspect", "--raw", *access.flags(), ref.skopeo()))
    _check(done, ref, "reading the manifest of")
    return done.stdout.encode()


async def inspect_config(ref: ImageRef, access: Access) -> dict[str, Any]:
    """The image config; costs one small blob, so a wrong platform is refused before layers."""
    argv = _skopeo(access, "inspect", "--config", "--raw", *access.flags(), ref.skopeo())
    done = await run(argv)
    _check(done, ref, "reading the config of")
    config = json.loads(done.stdout)
    if not isinstance(config, dict):
        raise ImageCorrupt(f"the config of {ref} is not a JSON object")
    return config


async def copy(ref: ImageRef, destination: str, access: Access) -> None:
    """Copy the image's blobs into the cache layout; blobs already there are not fetched."""
    argv = _skopeo(access, "copy", "--quiet", *access.flags("src-"), ref.skopeo(), destination)
    _check(await run(argv), ref, "copying")


def _check(done: Finished, ref: ImageRef, action: str) -> None:
    if not done.ok:
        raise failure(done, ref, action)


def failure(done: Finished, ref: ImageRef, action: str) -> VolantError:
    """The error a failed skopeo run stands for: the first rule whose marker skopeo printed."""
    raise_if_no_space(done, f"{action} {ref}")
    low = done.stderr.lower()
    # skopeo says this of any failure to open the source, not only of a bad name.
    text = _PARSING.sub("", done.message)
    for markers, remote_only, make in _RULES:
        if (ref.is_remote or not remote_only) and any(m in low for m in markers):
            return make(f"{action} {ref}", text)
    if ref.is_remote:
        return DownloadFailed(f"{action} {ref} failed: {text}")
    return ToolFailed(f"{action} {ref}: skopeo failed: {text}")


def _corrupt(what: str, text: str) -> VolantError:
    return ImageCorrupt(f"{what}: a blob is corrupt: {text}")


def _tls(what: str, text: str) -> VolantError:
    return RegistryUnreachable(
        f"{what}: TLS verification failed: {text}",
        hint="trust the registry's CA: /etc/containers/certs.d/HOST:PORT/ca.crt",
    )


def _denied(what: str, text: str) -> VolantError:
    return RegistryDenied(
        f"{what}: the registry refused access: {text}",
        hint="give an auth file with credentials for this registry",
    )


def _not_found(what: str, text: str) -> VolantError:
    return ImageNotFound(f"{what}: no such image: {text}")


def _unreachable(what: str, text: str) -> VolantError:
    return RegistryUnreachable(f"{what}: the registry is unreachable: {text}")


# (markers in skopeo's stderr, registries only?, error); the first match wins.
_RULES: tuple[tuple[tuple[str, ...], bool, Callable[[str, str], VolantError]], ...] = (
    (_CORRUPT, False, _corrupt),
    (_TLS, True, _tls),
    (_DENIED, True, _denied),
    (_NOT_FOUND, False, _not_found),
    (_UNREACHABLE, True, _unreachable),
)
