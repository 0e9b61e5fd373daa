"""Shared steps of the guest image builders: apt downloads, unpacking, atomic writes.

Standard library only: the builders run before the virtualenv exists (make deps).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# udhcpc calls this with the lease in its environment: the interface, the default route and
# /etc/resolv.conf (the lease's servers; its domain, else volant.domain= from boot.sh).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        [ -n "$router" ] && route add default gw "${router%% *}"
        {
            search=${domain:-$VOLANT_DOMAIN}
            [ -n "$search" ] && echo "search $search"
            for server in $dns; do echo "nameserver $server"; done
        } > /etc/resolv.conf
        ;;
esac
exit 0
"""


class BuildError(Exception):
    """A step failed; the message says which and why."""


@dataclass(frozen=True)
class DebInfo:
    package: str
    version: str
    filename: str
    sha256: str


def log(message: str) -> None:
    print(f"build_guest: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Apt:
    """apt queries that refresh the package lists at most once, and only when they are missing."""

    def __init__(self) -> None:
        self._updated = False

    def refresh(self) -> bool:
        """Run apt-get update unless it already ran; False when it had."""
        if self._updated:
            return False
        log("apt lists look stale or missing; running apt-get update once")
        run(["apt-get", "update", "-qq"])
        self._updated = True
        return True

    def _retry(self, argv: list[str], cwd: Path | None = None) -> str:
        try:
            return run(argv, cwd)
        except BuildError:
            if not self.refresh():
                raise
            return run(argv, cwd)

    def resolve(self) -> list[DebInfo]:
        """The kernel package and busybox-static, at their candidate versions."""
        return [self.show(self.kernel_package()), self.show(BUSYBOX)]

    def kernel_package(self) -> str:
        out = self._retry(["apt-cache", "depends", KERNEL_META])
        for line in out.splitlines():
            key, _, value = line.strip().lstrip("|").partition(":")
            value = value.strip()
            if key == "Depends" and value.startswith("linux-image-") and value[12:13].isdigit():
                return value
        raise BuildError(f"{KERNEL_META} depends on no versioned linux-image package")

    def show(self, package: str) -> DebInfo:
        out = self._retry(["apt-cache", "show", "--no-all-versions", package])
        fields: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" ") and key not in fields:
                fields[key] = value.strip()
        try:
            return DebInfo(
                package, fields["Version"], Path(fields["Filename"]).name, fields["SHA256"]
            )
        except KeyError as exc:
            raise BuildError(f"apt-cache show {package}: no {exc.args[0]} field") from exc

    def download(self, info: DebInfo, debs: Path) -> Path:
        target = debs / info.filename
        if target.exists() and sha256_file(target) == info.sha256:
            return target
        log(f"downloading {info.package} {info.version}")
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            # apt-get download leaves a partial file on failure; a private directory keeps
            # that out of the cache.
            run(["apt-get", "download", f"{info.package}={info.version}"], Path(tmp))
            got = list(Path(tmp).glob("*.deb"))
            if len(got) != 1:
                raise BuildError(f"apt-get download {info.package} produced {len(got)} files")
            if sha256_file(got[0]) != info.sha256:
                raise BuildError(f"{got[0].name}: sha256 does not match the archive's")
            os.replace(got[0], target)
        return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract(deb: Path, root: Path) -> Path:
    """Unpack a .deb once into root/<deb stem>; the directory appears complete or not at all."""
    dest = root / deb.stem
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".x-"))
    try:
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def fetch_packages(apt: Apt, names: list[str], cache: Path) -> tuple[list[DebInfo], list[Path]]:
    """Resolve, download (or reuse) and unpack packages; refresh stale lists once and retry."""
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    try:
        debs = [apt.show(name) for name in names]
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    except BuildError:
        if not apt.refresh():
            raise
        debs = [apt.show(name) for name in names]
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    return debs, [extract(path, cache / "extract") for path in paths]
