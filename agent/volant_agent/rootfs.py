"""The workload's root for a rootfs plugin, and the disks (volumes) mounted into it.

The config disk's `storage` key says what to assemble (agent/README.md, "Config disk format").
The agent stays the child of the host initramfs' PID 1 and never switch_roots: it mounts, under
/volant,

    lower  the plugin's rootfs disk, read-only (erofs, squashfs or ext4)
    upper  the VM's own ext4 disk, or a tmpfs when the VM is ephemeral; upper/ and work/ in it
    root   an overlay of the two: the workload's `/`

then binds its own /proc, /sys, /dev, /dev/pts, /run and /tmp into root, writes /etc/hostname,
/etc/hosts and /etc/resolv.conf there, and mounts each volume disk at its path (a new,
read-write volume first gets the files, owner and mode of the image's directory it covers).
Ports below 1024 are opened to every user (net.ipv4.ip_unprivileged_port_start=0, as in a
Docker container). The workload is then started chrooted into root (volant_agent.workload).
Disks are found by the serial volantd gave them (/sys/block/vdX/serial). Every path inside
the image is resolved with volant_agent.paths, so the image's symlinks cannot point a mount or
a write outside root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volant_agent.paths import PathError, check_path, resolve_in_root, write_in_root
from volant_agent.users import UserError, resolve_user
from volant_agent.workload import Supervisor

log = logging.getLogger(__name__)

FORMATS = ("erofs", "squashfs", "ext4")
BASE = Path("/volant")
MODULES_LIST = Path("/lib/volant/storage-modules")
BINDS = ("/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp")
DISK_WAIT = 5.0
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


class StorageError(Exception):
    """The storage the host asked for cannot be assembled; the message says what and why."""


class BadStorage(ValueError):
    """The config disk's storage document is malformed; the message names the key."""


@dataclass(frozen=True)
class Mount:
    serial: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Storage:
    """The config disk's storage key, checked. rootfs_serial is "" without a rootfs (then the
    mounts go into the agent's own root); upper_serial is "" for a tmpfs upper layer."""

    rootfs_serial: str = ""
    rootfs_format: str = ""
    upper_serial: str = ""
    mounts: tuple[Mount, ...] = field(default_factory=tuple)


def _serial(obj: Mapping[str, Any], where: str) -> str:
    value = obj.get("serial")
    if not isinstance(value, str) or not value or len(value) > 20:
        raise BadStorage(f"storage.{where}.serial must be a string of 1 to 20 characters")
    return value


def parse_storage(raw: object) -> Storage:
    """The storage document, validated (ValueError says which key is wrong)."""
    if not isinstance(raw, dict):
        raise BadStorage("storage must be an object")
    rootfs, upper = raw.get("rootfs"), raw.get("upper")
    storage = Storage()
    if rootfs is not None:
        if not isinstance(rootfs, dict) or rootfs.get("format") not in FORMATS:
            raise BadStorage(f"storage.rootfs.format must be one of {', '.join(FORMATS)}")
        if not isinstance(upper, dict):
            raise BadStorage("storage.upper must be an object")
        upper_serial = "" if upper.get("tmpfs") is True else _serial(upper, "upper")
        storage = Storage(_serial(rootfs, "rootfs"), rootfs["format"], upper_serial)
    mounts = raw.get("mounts", [])
    if not isinstance(mounts, list):
        raise BadStorage("storage.mounts must be a list")
    parsed = []
    for i, mount in enumerate(mounts):
        if not isinstance(mount, dict) or not isinstance(mount.get("path"), str):
            raise BadStorage(f"storage.mounts[{i}] needs a path")
        try:
            path = check_path(mount["path"])
        except PathError as exc:
            raise BadStorage(f"storage.mounts[{i}].path: {exc}") from exc
        parsed.append(Mount(_serial(mount, f"mounts[{i}]"), path, mount.get("read_only") is True))
    return Storage(storage.rootfs_serial, storage.rootfs_format, storage.upper_serial,
                   tuple(parsed))  # fmt: skip


def disks_by_serial(sys_block: Path = Path("/sys/block")) -> dict[str, Path]:
    """Virtio disks by serial: serial -> /dev/vdX."""
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for entry in sys_block.iterdir():
            if entry.name.startswith("vd"):
                with contextlib.suppress(OSError):
                    serial = (entry / "serial").read_text().strip()
                    if serial:
                        found[serial] = Path("/dev") / entry.name
    return found


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        said = out.decode(errors="replace").strip().splitlines()
        raise StorageError(f"{' '.join(argv)}: {said[-1] if said else proc.returncode}")


class Assembly:
    """Mounts the storage, remembers what it mounted, and unmounts it in reverse at stop."""

    def __init__(self, storage: Storage, base: Path = BASE) -> None:
        self.storage = storage
        self.base = base
        self.mounted: list[Path] = []

    @property
    def root(self) -> Path | None:
        """The workload's root; None when the workload runs in the agent's own root."""
        return self.base / "root" if self.storage.rootfs_serial else None

    async def _mount(self, target: Path, *args: str) -> None:
        await _run("mount", *args, str(target))
        self.mounted.append(target)

    async def _disk(self, serial: str) -> Path:
        """The device of the disk with serial, waiting briefly for it to appear."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DISK_WAIT
        while True:
            device = disks_by_serial().get(serial)
            if device is not None:
                return device
            if loop.time() > deadline:
                raise StorageError(f"no disk with serial {serial!r} is attached")
            await asyncio.sleep(0.1)

    async def assemble(self, cmdline: str) -> None:
        """Mount everything storage asks for; StorageError (after unmounting what was mounted)
        when a step fails."""
        try:
            root = self.root
            if root is not None:
                await self._root(root, cmdline)
            for mount in self.storage.mounts:
                await self._volume(root or Path("/"), mount)
        except (OSError, PathError, StorageError) as exc:
            await self.unmount()
            if isinstance(exc, StorageError):
                raise
            raise StorageError(str(exc)) from exc

    async def _root(self, root: Path, cmdline: str) -> None:
        st = self.storage
        await load_modules(("overlay", st.rootfs_format))
        lower, upper = self.base / "lower", self.base / "upper"
        _make_dirs(lower, upper, root)
        rootfs = await self._disk(st.rootfs_serial)
        try:
            await self._mount(lower, "-t", st.rootfs_format, "-o", "ro", str(rootfs))
        except StorageError as exc:
            raise StorageError(f"cannot mount the rootfs ({st.rootfs_format}): {exc}") from exc
        if st.upper_serial:
            await self._mount(upper, "-t", "ext4", str(await self._disk(st.upper_serial)))
        else:
            await self._mount(upper, "-t", "tmpfs", "-o", "mode=0755", "tmpfs")
        _make_dirs(upper / "upper", upper / "work")
        options = f"lowerdir={lower},upperdir={upper / 'upper'},workdir={upper / 'work'}"
        await self._mount(root, "-t", "overlay", "-o", options, "overlay")
        if not _is_mount("/dev/pts"):
            await _run("mount", "-t", "devpts", "-o", "gid=5,mode=0620,ptmxmode=0666",
                       "devpts", "/dev/pts")  # fmt: skip
        for source in BINDS:
            await self._mount(resolve_in_root(root, source, make_dirs=True), "-o", "bind", source)
        write_etc(root, cmdline)
        allow_low_ports()

    async def _volume(self, root: Path, mount: Mount) -> None:
        device = await self._disk(mount.serial)
        target = resolve_in_root(root, mount.path, make_dirs=True)
        if mount.read_only:
            await self._mount(target, "-t", "ext4", "-o", "ro", str(device))
            return
        # Mounted aside first: a new volume takes the files, owner and mode of the image's
        # directory it will cover (as a Docker named volume does), so a workload that runs as
        # the image's own user can write to it. Then it is bound over that directory.
        staging = self.base / "volumes" / mount.serial
        _make_dirs(staging)
        await self._mount(staging, "-t", "ext4", str(device))
        if is_new_volume(staging):
            await _run("cp", "-a", f"{target}/.", f"{staging}/")
            take_owner_and_mode(staging, target)
        await self._mount(target, "-o", "bind", str(staging))

    async def unmount(self) -> None:
        """Unmount what assemble mounted, innermost first (lazily when busy)."""
        while self.mounted:
            target = self.mounted.pop()
            try:
                await _run("umount", str(target))
            except StorageError:
                with contextlib.suppress(StorageError):
                    await _run("umount", "-l", str(target))


async def load_modules(wanted: tuple[str, ...], listing: Path = MODULES_LIST) -> None:
    """insmod the file system modules in wanted (overlay, and the rootfs' format) with what they
    depend on, in order; the image lists them (`name: modules…`), and only the VMs of rootfs
    plugins load them."""
    for name in _module_names(listing, wanted):
        proc = await asyncio.create_subprocess_exec(
            "insmod", f"/lib/modules/{name}.ko",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()  # "File exists" when loaded already: fine


# Small synchronous steps on the guest's own tmpfs, kept out of the coroutines above: they
# take microseconds and nothing else runs in the agent while the root is assembled.


def _make_dirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)


def is_new_volume(top: Path) -> bool:
    """A file system that holds nothing but mkfs.ext4's lost+found: a volume never used."""
    return set(os.listdir(top)) <= {"lost+found"}


def take_owner_and_mode(top: Path, like: Path) -> None:
    """Give top the owner, group and permission bits of like (not following a link)."""
    st = os.lstat(like)
    os.chown(top, st.st_uid, st.st_gid)
    os.chmod(top, stat.S_IMODE(st.st_mode))


def allow_low_ports(sysctl: Path = UNPRIVILEGED_PORT_START) -> None:
    """Let the image's non-root user bind ports below 1024 (nginx on 80), as Docker does in
    a container: the VM is the workload's alone, so those ports guard nothing."""
    sysctl.write_text("0\n")


def _is_mount(path: str) -> bool:
    return os.path.ismount(path)


def _module_names(listing: Path, wanted: tuple[str, ...]) -> list[str]:
    try:
        lines = listing.read_text().splitlines()
    except OSError:
        return []
    names: list[str] = []
    for line in lines:
        module, _, needed = line.partition(":")
        if module.strip() in wanted:
            names += needed.split()
    return names


def ip_fields(cmdline: str) -> list[str]:
    """The fields of the kernel's ip= argument (client:server:gw:mask:host:dev:auto:dns0:dns1)."""
    for token in cmdline.split():
        if token.startswith("ip="):
            return token[3:].split(":")
    return []


def write_etc(root: Path, cmdline: str) -> None:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf in root, for this guest.

    The name servers are ip='s dns0 and dns1 when it has them, else the gateway (volantd's
    bridge address, where its dnsmasq answers); the search domain is volant.domain=. A guest
    in dhcp mode has neither: it gets the guest's own /etc/resolv.conf, which udhcpc wrote from
    its lease."""
    fields = ip_fields(cmdline) + [""] * 9
    name = socket.gethostname()
    address = fields[0]
    servers = [f for f in fields[7:9] if f] or [f for f in fields[2:3] if f]
    domain = next((t[14:] for t in cmdline.split() if t.startswith("volant.domain=")), "")
    hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    hosts += f"{address or '127.0.1.1'} {name}\n"
    write_in_root(root, "/etc/hostname", f"{name}\n".encode())
    write_in_root(root, "/etc/hosts", hosts.encode())
    resolv = f"search {domain}\n" if domain else ""
    resolv += "".join(f"nameserver {server}\n" for server in servers)
    if not servers:
        with contextlib.suppress(OSError):
            resolv = Path("/etc/resolv.conf").read_text()
    write_in_root(root, "/etc/resolv.conf", resolv.encode())


async def prepare(raw: object, cmdline: str, supervisor: Supervisor) -> Assembly | None:
    """Assemble the storage the config disk asks for (raw: its storage key, None without one)
    and point supervisor at the root and the user; on failure, supervisor.fail says why (the
    workload never starts) and nothing stays mounted."""
    user = supervisor.workload.user
    assembly = None
    try:
        if raw is not None:
            assembly = Assembly(parse_storage(raw))
            await assembly.assemble(cmdline)
            supervisor.root = assembly.root
        if supervisor.root is not None or user:
            supervisor.identity = resolve_user(user, supervisor.root or Path("/"))
    except (BadStorage, UserError, StorageError) as exc:
        log.error("workload not started: %s", exc)
        supervisor.fail(str(exc))
        if assembly is not None:
            await assembly.unmount()
        return None
    return assembly
