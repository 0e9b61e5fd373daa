"""The sysbox init stage: PID 1 of the new namespaces, until it becomes systemd.

Run by scripts/sysbox.py through `unshare --pid --fork --mount --net --uts --ipc`, with one JSON
argument. It joins the sandbox's cgroup and unshares the cgroup namespace there, builds the new
root (an overlay of `/` with a tmpfs upper layer, fresh /proc, /sys, /dev, /run, /tmp and a
cgroup2 mount), writes a small target and its masks, pivots into it and executes systemd.
Standard library only; the host's root mount is never changed (propagation is private).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import stat
import sys
import uuid
from pathlib import Path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
CLONE_NEWCGROUP = 0x02000000
PR_CAPBSET_DROP = 24
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Capabilities whose use would change the shared host: kernel modules and the clock.
DROPPED_CAPS = (16, 25)  # CAP_SYS_MODULE, CAP_SYS_TIME

SYSTEMD = "/lib/systemd/system"
TARGET = "sysbox.target"
WANTED = (
    "dbus.socket",
    "dbus.service",
    "polkit.service",
    "systemd-journald.service",
    "systemd-machined.service",
)
# Units that fail, stall or reach for host-global state when systemd runs in a container.
MASKED = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "console-getty.service",
    "dev-hugepages.mount",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@.service",
    "kmod-static-nodes.service",
    "logrotate.timer",
    "man-db.timer",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "serial-getty@.service",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "systemd-ask-password-console.path",
    "systemd-binfmt.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-machine-id-commit.service",
    "systemd-modules-load.service",
    "systemd-networkd-wait-online.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-repart.service",
    "systemd-sysctl.service",
    "systemd-timesyncd.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-udev-trigger.service",
    "systemd-udevd.service",
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "kvm", "net/tun", "fuse")
JOURNALD_CONF = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n"


def _libc() -> ctypes.CDLL:
    # libc is loaded already: this only looks it up, so there is nothing worth keeping.
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(
    source: str, target: Path, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    """mount(2), raising OSError."""
    _check(
        _libc().mount(
            source.encode(),
            str(target).encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def bind(source: Path, target: Path, *, readonly: bool = False) -> None:
    mount(str(source), target, None, MS_BIND)
    # A bind mount takes its flags only from a remount.
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    mount("none", target, None, flags)


def make_dev(dev: Path) -> None:
    """A tmpfs /dev with fresh nodes: the host's own nodes must not change mode or owner."""
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=4m")
    for name in DEVICES:
        host = Path("/dev") / name
        if not host.exists():
            continue
        info = host.stat()
        node = dev / name
        node.parent.mkdir(exist_ok=True)
        os.mknod(node, stat.S_IFCHR, info.st_rdev)
        os.chown(node, info.st_uid, info.st_gid)
        os.chmod(node, stat.S_IMODE(info.st_mode))  # mknod's mode is cut by the umask
    (dev / "pts").mkdir()
    mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666")
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    mount("tmpfs", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for index, name in enumerate(("stdin", "stdout", "stderr")):
        (dev / name).symlink_to(f"/proc/self/fd/{index}")
    (dev / "fd").symlink_to("/proc/self/fd")
    # systemd only writes to a console that is a terminal; its journal is the log that counts.
    os.mknod(dev / "console", stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(dev / "console", 0o600)


def make_api_filesystems(root: Path, cgroup: str) -> None:
    """/proc (its /sys read-only except net), read-only /sys, /dev, cgroup2, /run, /tmp."""
    proc = root / "proc"
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Kernel-wide sysctls stay out of reach; the sandbox's own network ones stay writable.
    bind(proc / "sys", proc / "sys", readonly=True)
    bind(proc / "sys/net", proc / "sys/net")
    if (proc / "sysrq-trigger").exists():
        bind(proc / "sysrq-trigger", proc / "sysrq-trigger", readonly=True)
    mount("sysfs", root / "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    (Path(cgroup) / "cgroup.procs").write_text("0", encoding="utf-8")
    _check(_libc().unshare(CLONE_NEWCGROUP), "unshare cgroup namespace")
    mount("cgroup2", root / "sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dev(root / "dev")
    mount("tmpfs", root / "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    mount("tmpfs", root / "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def write_etc(root: Path, hostname: str) -> None:
    """The boot target, its masks, a volatile journal, a fresh machine id and the hostname."""
    etc = root / "etc"
    units = etc / "systemd/system"
    wanted = " ".join(unit for unit in WANTED if (root / SYSTEMD.lstrip("/") / unit).exists())
    (units / TARGET).write_text(
        "[Unit]\nDescription=Sysbox test system\n"
        f"Wants={wanted}\nAfter={wanted}\nAllowIsolate=yes\n",
        encoding="utf-8",
    )
    for unit in MASKED:
        masked = units / unit
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")
    conf = etc / "systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "sysbox.conf").write_text(JOURNALD_CONF, encoding="utf-8")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n", encoding="utf-8")
    (etc / "hostname").write_text(hostname + "\n", encoding="utf-8")


def pivot(root: Path) -> None:
    """Make root the new `/` and drop the old one (pivot_root(".", ".") then detach)."""
    os.chdir(root)
    number = SYS_PIVOT_ROOT[platform.machine()]
    _check(_libc().syscall(number, b".", b"."), "pivot_root")
    _check(_libc().umount2(b".", MNT_DETACH), "detach old root")
    os.chdir("/")


def main() -> None:
    config = json.loads(sys.argv[1])
    # Pin each bind source before anything is mounted over it: the staging tmpfs below covers
    # /tmp, where a checkout (a CI clone, say) may well live.
    sources = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in config["binds"]}
    staging = Path("/tmp")
    mount("sysbox", staging, "tmpfs", 0, "mode=700")
    for name in ("upper", "work", "root"):
        (staging / name).mkdir()
    root = staging / "root"
    mount(
        "sysbox",
        root,
        "overlay",
        0,
        f"lowerdir=/,upperdir={staging}/upper,workdir={staging}/work",
    )
    make_api_filesystems(root, config["cgroup"])
    # After the sandbox's own /run and /tmp, so that those do not hide what is bound under them.
    for path, fd in sources.items():
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", root / path.lstrip("/"), None, MS_BIND | MS_REC)
        os.close(fd)
    write_etc(root, config["hostname"])
    socket.sethostname(config["hostname"])
    pivot(root)
    for cap in DROPPED_CAPS:
        _check(_libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability")
    env = {"container": "sysbox", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}
    os.execve("/lib/systemd/systemd", ["/lib/systemd/systemd", f"--unit={TARGET}"], env)


if __name__ == "__main__":
    main()
