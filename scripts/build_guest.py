#!/usr/bin/env python3
"""Build the small test guest: Debian's cloud kernel plus a busybox initramfs.

Outputs in --out: vmlinuz, initramfs.img (gzip newc cpio, byte-for-byte reproducible) and
guest.json (kernel version, sha256 of every output and of the inputs). Re-running with the same
inputs does nothing; every output is written to a temporary file and renamed into place.

Standard library only: it runs before the virtualenv exists (make deps).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# Wanted modules; their dependencies are added from .modinfo. button + evdev carry the ACPI power
# button to acpid; virtio_mmio serves the microvm machine, virtio_pci the pc/q35 machines.
WANTED_MODULES = ("virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng", "button", "evdev")
# Bump when the initramfs layout changes in a way the inputs' hashes do not capture.
FORMAT_VERSION = 1
HERE = Path(__file__).resolve().parent
INIT_TEMPLATE = HERE / "guest_init.sh"

POWER_HANDLER = "#!/bin/sh\necho 'volant-init: power button, powering off'\nsync\npoweroff -f\n"
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        [ -n "$router" ] && route add default gw "${router%% *}"
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


# --- kernel modules ------------------------------------------------------------------------


def modinfo(path: Path) -> dict[str, str]:
    """Key/value pairs of an ELF64 module's .modinfo section (what modinfo(8) prints)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path}: not a little-endian ELF64 module")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for index in range(shnum):
        name_off, offset, size = section(index)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off : end] == b".modinfo":
            pairs = (item.partition(b"=") for item in data[offset : offset + size].split(b"\0"))
            return {k.decode(): v.decode() for k, _, v in pairs if k}
    raise BuildError(f"{path}: no .modinfo section")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes folded to underscores, as the kernel does) -> .ko file."""
    index: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko")):
        index[path.name[:-3].replace("-", "_")] = path
    if not index:
        raise BuildError(f"no uncompressed .ko modules under {modules_dir}")
    return index


def resolve_modules(index: dict[str, Path], wanted: Iterable[str]) -> list[str]:
    """Wanted modules and their dependencies, each after everything it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BuildError(f"module dependency cycle through {name}")
        if name not in index:
            raise BuildError(f"module {name} is not in the kernel package")
        visiting.add(name)
        depends = modinfo(index[name]).get("depends", "")
        for dep in sorted(d.replace("-", "_") for d in depends.split(",") if d):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


# --- initramfs -----------------------------------------------------------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class Tree:
    """Initramfs contents; parent directories are implied."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self.entries.setdefault(parent, Entry(parent, S_IFDIR | 0o755))

    def dir(self, path: str, perm: int = 0o755) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFDIR | perm)

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFREG | perm, data)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._parents(path)
        self.entries[path] = Entry(path, S_IFCHR | perm, rdev=(major, minor))


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """A newc archive with fixed inode numbers, owners and mtimes: equal trees, equal bytes."""
    out = io.BytesIO()

    def record(ino: int, entry: Entry) -> None:
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
        out.write(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(entry.data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        record(ino, entry)
    record(0, Entry("TRAILER!!!", 0))
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def build_tree(busybox: Path, index: dict[str, Path], modules: list[str]) -> Tree:
    tree = Tree()
    for path in ("proc", "sys", "dev", "run", "tmp", "root", "www", "etc/acpi/PWRF"):
        tree.dir(path)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    tree.chardev("dev/console", 5, 1)
    tree.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in run([str(busybox), "--list-full"]).split():
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")
    for name in modules:
        tree.file(f"lib/modules/{name}.ko", index[name].read_bytes())
    init = INIT_TEMPLATE.read_text().replace("@MODULES@", " ".join(modules))
    tree.file("init", init.encode(), 0o755)
    tree.file("etc/acpi/PWRF/00000080", POWER_HANDLER.encode(), 0o755)
    # busybox acpid reports the button as "PWRF" (fixed ACPI event, pc/q35) or "PWRB" (a power
    # button device, as on microvm's GED); both run the same handler.
    tree.file("etc/acpid.conf", b"PWRF PWRF/00000080\nPWRB PWRF/00000080\n")
    tree.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    tree.file("etc/hostname", b"volant\n")
    return tree


# --- driver --------------------------------------------------------------------------------


def inputs_key(debs: list[DebInfo]) -> str:
    digest = hashlib.sha256(f"format={FORMAT_VERSION}\n".encode())
    for deb in debs:
        digest.update(f"{deb.package} {deb.version} {deb.sha256}\n".encode())
    for source in (Path(__file__).resolve(), INIT_TEMPLATE):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def up_to_date(out: Path, key: str) -> bool:
    try:
        meta = json.loads((out / "guest.json").read_text())
        return bool(
            meta.get("inputs_sha256") == key
            and sha256_file(out / "vmlinuz") == meta["vmlinuz_sha256"]
            and sha256_file(out / "initramfs.img") == meta["initramfs_sha256"]
        )
    except (OSError, ValueError, KeyError):
        return False


def fetch(apt: Apt, debs: list[DebInfo], cache: Path) -> tuple[list[DebInfo], list[Path]]:
    """Download (or reuse) and unpack the debs; on failure refresh the lists once and retry."""
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    try:
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    except BuildError:
        # Stale lists name versions the archive no longer has: resolve again after an update.
        if not apt.refresh():
            raise
        debs = apt.resolve()
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    return debs, [extract(path, cache / "extract") for path in paths]


def build(out: Path, cache: Path) -> dict[str, object]:
    apt = Apt()
    debs = apt.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if up_to_date(out, inputs_key(debs)):
        log(f"{out} is up to date ({debs[0].package})")
        meta: dict[str, object] = json.loads((out / "guest.json").read_text())
        return meta
    debs, (kernel_root, busybox_root) = fetch(apt, debs, cache)
    key = inputs_key(debs)
    kernel_pkg = debs[0].package
    kernel_version = kernel_pkg.removeprefix("linux-image-")
    vmlinuz = (kernel_root / "boot" / f"vmlinuz-{kernel_version}").read_bytes()
    index = module_index(kernel_root / "lib" / "modules" / kernel_version)
    modules = resolve_modules(index, WANTED_MODULES)
    tree = build_tree(busybox_root / "bin" / "busybox", index, modules)
    initramfs = gzip_bytes(cpio_newc(tree.entries.values()))
    write_atomic(out / "vmlinuz", vmlinuz)
    write_atomic(out / "initramfs.img", initramfs)
    meta = {
        "kernel_package": kernel_pkg,
        "kernel_version": kernel_version,
        "kernel_deb_version": debs[0].version,
        "busybox_version": debs[1].version,
        "modules": modules,
        "vmlinuz_sha256": hashlib.sha256(vmlinuz).hexdigest(),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
        "inputs_sha256": key,
    }
    write_atomic(out / "guest.json", (json.dumps(meta, indent=2) + "\n").encode())
    log(f"built {out} ({kernel_version}, {len(initramfs)} bytes of initramfs)")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(".cache/guest"))
    parser.add_argument(
        "--cache", type=Path, default=None, help="where .debs are kept (default: <out>/../debs)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    cache: Path = (args.cache or out.parent).resolve()
    try:
        build(out, cache)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
