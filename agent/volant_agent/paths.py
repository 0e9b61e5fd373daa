"""Paths inside the workload's root, resolved as if that root were `/`.

The rootfs comes from an image the host does not vouch for: any of its directories may be a
symlink to `/etc` or `../../..`. The agent runs outside that root (it is the guest's PID 1's
child, never chrooted), so following such a link with the kernel's lookup would reach the
agent's own files. Every path the agent touches in the root (mount points, /etc/hosts,
/etc/passwd) is resolved here component by component, symlinks followed relative to the root
and `..` stopped at it, as chroot(2) would.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

MAX_LINKS = 40  # as the kernel's lookup: more is a loop


class PathError(ValueError):
    """A path that is not absolute and clean, or that cannot be resolved inside the root."""


def check_path(path: str) -> str:
    """path, if it is absolute, has no `..`, NUL or empty name, and is not `/` itself."""
    if not path.startswith("/") or "\0" in path:
        raise PathError(f"{path!r} is not an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"{path!r} leaves its root (..)")
    if not parts:
        raise PathError(f"{path!r} is the root itself")
    return "/" + "/".join(parts)


def resolve_in_root(root: Path, path: str, *, make_dirs: bool = False) -> Path:
    """The host path of path inside root, every symlink on the way followed inside root.

    make_dirs creates missing directories (mode 0755) on the way, the last one included; without
    it a missing component raises FileNotFoundError, unless it is the last (then the path it
    would have is returned). PathError for a symlink loop or a non-directory on the way.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            if make_dirs:
                os.mkdir(candidate, 0o755)
                done.append(part)
                continue
            if not todo:
                return candidate
            raise
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise PathError(f"{path}: too many symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            raise PathError(f"{path}: {'/' + '/'.join([*done, part])} is not a directory")
        done.append(part)
    return root.joinpath(*done)


def read_in_root(root: Path, path: str, limit: int) -> bytes:
    """The bytes of the regular file path inside root, at most limit of them (PathError when
    it is longer or not a regular file)."""
    real = resolve_in_root(root, path)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathError(f"{path} is not a regular file in the image")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk
        raise PathError(f"{path} is larger than {limit} bytes")
    finally:
        os.close(fd)


def write_in_root(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write data to path inside root, replacing whatever entry is there (a symlink is
    replaced, not followed); its directory is made when missing."""
    clean = PurePosixPath(check_path(path))
    directory = resolve_in_root(root, str(clean.parent), make_dirs=True)
    target = directory / clean.name
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise PathError(f"{path} is a directory in the image")
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
