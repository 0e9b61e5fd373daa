"""The file work behind /v1/files, done in a child process chrooted into the workload's root.

`python3 -m volant_agent.filework JOB` (JOB: a JSON object) imports all it needs, then chroot()s
into the root and, for writes, drops to the writer's uid, gid and groups. From there on every
lookup the kernel does, every symlink and `..` included, stays inside the workload's root: the
agent's own files (its code, /etc/volant*, its config disk, its secret) are not in it, so no path,
link or tar member can reach them, and a write can change only what the writer may change.

Protocol. read: one JSON header line on stdout ({"kind": "file", "size", "mode", "mtime"} or
{"kind": "dir"}, or {"error", "status"}), then the file's bytes or an uncompressed tar of the
directory (its top entry named after it). write: the body on stdin (a file's bytes or a tar), and
one JSON line on stdout at the end ({"path", "entries"} or {"error", "status"}).

Tar members are checked one by one before they are written, beyond what chroot already gives:
no absolute name, no `..`, nothing but files, directories, symlinks and hard links, no member (or
hard link target) reached through a symlink, and a non-directory already at a member's name is
replaced, never written through. Set-id and sticky bits are dropped; the owner is the writer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

BLOCK = 1 << 16
# Virtual file systems bound into the root: never part of a directory's tar.
SKIPPED_FS = ("/proc", "/sys", "/dev")


class JobError(Exception):
    """Fails the job with an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Job:
    op: str  # "read" or "write"
    root: str
    path: str
    kind: str = "file"  # write: "file" or "tar"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    mode: int | None = None  # write, file: its permission bits (else kept, or 0644)
    mtime: float | None = None  # write, file
    limit: int = 0  # read: refuse (413) more bytes than this; 0: no limit

    @classmethod
    def parse(cls, text: str) -> Job:
        raw = json.loads(text)
        raw["groups"] = tuple(raw.get("groups", ()))
        return cls(**raw)


def enter(job: Job) -> None:
    """chroot into the workload's root; for a write, become the writer (after chroot, which
    needs root)."""
    os.chroot(job.root)
    os.chdir("/")
    if job.op == "write":
        os.setgroups(list(job.groups))
        os.setgid(job.gid)
        os.setuid(job.uid)
        os.umask(0o022)


def status_of(exc: OSError) -> int:
    """The HTTP status for an OSError of the file system."""
    return {
        errno.ENOENT: 404,
        errno.EACCES: 403,
        errno.EPERM: 403,
        errno.EROFS: 403,
        errno.EISDIR: 409,
        errno.ENOTDIR: 409,
        errno.EEXIST: 409,
        errno.ENOSPC: 507,
        errno.EDQUOT: 507,
        errno.ELOOP: 400,
        errno.ENAMETOOLONG: 400,
    }.get(exc.errno or 0, 500)


def message_of(exc: OSError, path: str) -> str:
    return f"{path}: {exc.strerror or exc}"


# -- read ----------------------------------------------------------------------------------------


def _skipped_devices() -> set[int]:
    devices = set()
    for path in SKIPPED_FS:
        with contextlib.suppress(OSError):
            devices.add(os.lstat(path).st_dev)
    return devices


def _tree_size(top: str, skip: set[int], limit: int) -> None:
    """Raise 413 when the regular files under top add up to more than limit bytes."""
    total = 0
    for where, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(where, d)).st_dev not in skip]
        for name in files:
            st = os.lstat(os.path.join(where, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
        if limit and total > limit:
            raise JobError(413, f"{top} holds more than {limit} bytes (the files size limit)")


def read(job: Job, out: IO[bytes]) -> None:
    try:
        st = os.stat(job.path)
    except OSError as exc:
        raise JobError(status_of(exc), message_of(exc, job.path)) from exc
    if stat.S_ISREG(st.st_mode):
        if job.limit and st.st_size > job.limit:
            raise JobError(
                413, f"{job.path} is {st.st_size} bytes, over the files size limit ({job.limit})"
            )
        with open(job.path, "rb") as fh:
            header(out, {"kind": "file", "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
                         "mtime": st.st_mtime})  # fmt: skip
            while chunk := fh.read(BLOCK):
                out.write(chunk)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise JobError(409, f"{job.path} is neither a regular file nor a directory")
    skip = _skipped_devices()
    _tree_size(job.path, skip, job.limit)
    header(out, {"kind": "dir", "mode": stat.S_IMODE(st.st_mode)})
    name = os.path.basename(os.path.normpath(job.path)) or "root"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.isdev() or info.isfifo() else info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(job.path, arcname=name, recursive=False)
        for where, dirs, files in os.walk(job.path):
            dirs[:] = sorted(d for d in dirs if os.lstat(os.path.join(where, d)).st_dev not in skip)
            rel = os.path.relpath(where, job.path)
            for entry in [*dirs, *sorted(files)]:
                arc = os.path.normpath(os.path.join(name, rel, entry))
                tar.add(os.path.join(where, entry), arcname=arc, recursive=False, filter=keep)


# -- write ---------------------------------------------------------------------------------------


def write_file(job: Job, body: IO[bytes]) -> dict[str, Any]:
    path = os.path.normpath(job.path)
    if os.path.isdir(path):
        raise JobError(409, f"{job.path} is a directory; send a tar to copy into it")
    parent, base = os.path.split(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    mode = job.mode
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o644
    # Written aside and renamed over: a reader never sees half a file, and a symlink at path is
    # replaced, not followed.
    temp = os.path.join(parent, f".{base}.volant-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            while chunk := body.read(BLOCK):
                fh.write(chunk)
            os.fchmod(fh.fileno(), mode & 0o777)
        if job.mtime is not None:
            os.utime(temp, (job.mtime, job.mtime), follow_symlinks=False)
        os.rename(temp, path)
    except BaseException:
        with _quiet():
            os.unlink(temp)
        raise
    return {"path": path, "entries": 1}


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def clean_member_name(name: str) -> list[str]:
    """The components of a tar member's name; JobError for an absolute name or `..`."""
    if name.startswith("/") or "\0" in name:
        raise JobError(400, f"tar member {name!r} has an absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise JobError(400, f"tar member {name!r} leaves its directory (..)")
    return parts


def no_links_on_the_way(dest: str, parts: list[str], name: str) -> None:
    """JobError when a directory on the way from dest to the member is a symlink (a member
    written through a link an earlier member, or the workload, made)."""
    where = dest
    for part in parts[:-1]:
        where = os.path.join(where, part)
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise JobError(400, f"tar member {name!r} goes through the symlink {where}")


def _clear_target(target: str, member: tarfile.TarInfo) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not member.isdir():
            raise JobError(409, f"tar member {member.name!r}: {target} is a directory")
        return
    os.unlink(target)


def checked_members(
    tar: tarfile.TarFile, dest: str, rename: str | None, job: Job
) -> Iterator[tarfile.TarInfo]:
    """tar's members, checked and made safe one by one, as they are extracted into dest; with
    rename, the one top-level name they share becomes rename."""
    top: str | None = None
    for member in tar:
        parts = clean_member_name(member.name)
        if not parts:
            continue
        if rename is not None:
            top = parts[0] if top is None else top
            if parts[0] != top:
                raise JobError(400, "a tar with several top-level entries is copied into an "
                                    "existing directory only")  # fmt: skip
            parts[0] = rename
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise JobError(400, f"tar member {member.name!r} is a device or fifo")
        no_links_on_the_way(dest, parts, member.name)
        if member.islnk():
            link = clean_member_name(member.linkname)
            if rename is not None and link:
                link[0] = rename
            no_links_on_the_way(dest, [*link, ""], member.linkname)
            member.linkname = "/".join(link)
        member.name = "/".join(parts)
        _clear_target(os.path.join(dest, *parts), member)
        member.mode &= 0o777
        member.uid, member.gid, member.uname, member.gname = job.uid, job.gid, "", ""
        yield member


def write_tar(job: Job, body: IO[bytes]) -> dict[str, Any]:
    """docker cp's placement: into path when it is a directory; else the tar's one top-level
    entry becomes path."""
    path = os.path.normpath(job.path)
    if os.path.isdir(path):
        dest, rename = path, None
    else:
        dest, rename = os.path.split(path)
        os.makedirs(dest, mode=0o755, exist_ok=True)
    count = 0
    with tarfile.open(fileobj=body, mode="r|") as tar:
        members = checked_members(tar, dest, rename, job)

        def counted() -> Iterator[tarfile.TarInfo]:
            nonlocal count
            for member in members:
                count += 1
                yield member

        tar.errorlevel = 2
        # Every member went through checked_members, inside the chroot, as the writer.
        tar.extractall(dest, members=counted(), numeric_owner=True)  # noqa: S202
    return {"path": path, "entries": count}


# -- main ----------------------------------------------------------------------------------------


def header(out: IO[bytes], doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc, sort_keys=True).encode() + b"\n")
    out.flush()


def run(job: Job, stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Do job (already inside the root) and say how it went on stdout; the exit status."""
    try:
        if job.op == "read":
            read(job, stdout)
            return 0
        done = write_tar(job, stdin) if job.kind == "tar" else write_file(job, stdin)
        header(stdout, done)
        return 0
    except JobError as exc:
        header(stdout, {"error": str(exc), "status": exc.status})
    except tarfile.TarError as exc:
        header(stdout, {"error": f"not a valid tar stream: {exc}", "status": 400})
    except OSError as exc:
        header(stdout, {"error": message_of(exc, exc.filename or job.path),
                        "status": status_of(exc)})  # fmt: skip
    return 1


def main(argv: list[str]) -> int:
    job = Job.parse(argv[1])
    try:
        enter(job)
    except OSError as exc:
        header(sys.stdout.buffer, {"error": f"cannot enter the root: {exc}", "status": 500})
        return 1
    return run(job, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
