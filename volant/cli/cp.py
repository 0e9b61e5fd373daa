"""`volar vms cp`: copy files and directories into and out of a VM's workload root.

One side is `VM:/path` (an absolute path in the workload's root), the other a local path; a
local path that looks like `name:/x` is written `./name:/x`. Placement is docker cp's: copied
onto an existing directory, the source goes inside it under its own name; otherwise it becomes
the destination. Everything travels as a tar (uploads) or as the file's bytes or a directory's
tar (downloads), with permission bits and modification times; symlinks are copied as links.
Files written into the VM belong to the workload's user unless --user names another user of
the image (e.g. root). Set-id bits are dropped on the way in.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click

from volant.cli.context import Context, fail, pass_ctx
from volant.client.files import Download, download, upload
from volant.model.validate import NAME_RE

SPOOL = 8 << 20  # a tar this large stays in memory; larger goes to a temporary file


@dataclass(frozen=True)
class Remote:
    vm: str
    path: str

    def __str__(self) -> str:
        return f"{self.vm}:{self.path}"


def parse_location(text: str) -> Remote | Path:
    """`VM:/path` as a Remote, anything else as a local Path (BadParameter for `VM:relative`)."""
    vm, sep, path = text.partition(":")
    if not sep or not NAME_RE.fullmatch(vm) or text.startswith(("./", "/")):
        return Path(text)
    if not path.startswith("/"):
        raise click.BadParameter(
            f"{text!r}: the path in a VM is absolute ({vm}:/{path}); a local file with a colon "
            f"in its name is written ./{text}"
        )
    return Remote(vm, path)


def source_and_destination(src: str, dst: str) -> tuple[Remote | Path, Remote | Path]:
    """The two sides; a usage error unless exactly one of them is in a VM."""
    a, b = parse_location(src), parse_location(dst)
    if isinstance(a, Remote) == isinstance(b, Remote):
        raise click.UsageError(
            "one side of `volar vms cp` is in a VM (VM:/path) and the other is local"
            if isinstance(a, Remote)
            else "name a VM path on one side: `volar vms cp ./file web:/path` or "
            "`volar vms cp web:/path ./file`"
        )
    return a, b


def tar_of(source: Path, spool: IO[bytes]) -> int:
    """Write an uncompressed tar of source (its top entry named after it) to spool; its size."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.isdev() or info.isfifo() else info

    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=source.name or ".", filter=keep)
    size = spool.tell()
    spool.seek(0)
    return size


def _checked(tar: tarfile.TarFile, dest: Path, rename: str | None) -> Iterator[tarfile.TarInfo]:
    """The members of a downloaded tar, each confined to dest as it is about to be unpacked
    (no absolute name, no `..`, no device, nothing through a symlink already on disk, an earlier
    member's included; a file or link already at a member's name is replaced, not written
    through), the top entry renamed when rename is set."""
    for member in tar:
        parts = _clean(member.name)
        kinds = member.isfile() or member.isdir() or member.issym() or member.islnk()
        if not kinds:
            fail(f"the VM sent a tar member that is a device or fifo: {member.name!r}")
        if rename is not None:
            parts[0] = rename
        if member.islnk():
            link = _clean(member.linkname)
            if rename is not None:
                link[0] = rename
            _no_links(dest, [*link, ""], member.linkname)
            member.linkname = "/".join(link)
        _no_links(dest, parts, member.name)
        member.name = "/".join(parts)
        target = dest.joinpath(*parts)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        member.mode &= 0o777
        # Local files belong to whoever copies them out, not to the VM's uid.
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        yield member


def _clean(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        fail(f"the VM sent a tar member that leaves the copy: {name!r}")
    return parts


def _no_links(dest: Path, parts: list[str], name: str) -> None:
    where = dest
    for part in parts[:-1]:
        where = where / part
        if where.is_symlink():
            fail(f"tar member {name!r} goes through the symlink {where}")


def unpack(spool: IO[bytes], dest: Path, rename: str | None) -> None:
    try:
        with tarfile.open(fileobj=spool, mode="r") as tar:
            members = _checked(tar, dest, rename)
            # Each member is checked by _checked just before it is written.
            tar.extractall(dest, members=members, numeric_owner=True)  # noqa: S202
    except tarfile.TarError as exc:
        fail(f"the copy from the VM is not a whole tar: {exc}", "copy it again")
    except OSError as exc:
        fail(f"cannot write {exc.filename or dest}: {exc.strerror or exc}")


def place_file(spool: IO[bytes], target: Path, got: Download) -> None:
    temp = target.with_name(f".{target.name}.volar-{os.getpid()}")
    with open(temp, "wb") as out:
        while chunk := spool.read(1 << 16):
            out.write(chunk)
    os.chmod(temp, got.mode & 0o777)
    if got.mtime is not None:
        os.utime(temp, (got.mtime, got.mtime))
    temp.replace(target)


def push(ctx: Context, source: Path, to: Remote, user: str) -> str:
    if not os.path.lexists(source):
        fail(f"{source} does not exist")
    with tempfile.SpooledTemporaryFile(SPOOL) as spool:
        length = tar_of(source, spool)
        query = {"user": user} if user else {}
        done = ctx.call(lambda c: upload(c, to.vm, to.path, spool, length, tar=True, query=query))
    return f"{source} -> {to.vm}:{done.get('path', to.path)} ({done.get('entries', 0)} entries)"


def pull(ctx: Context, source: Remote, to: Path) -> str:
    inside = to.is_dir()
    name = Path(source.path.rstrip("/")).name or "root"
    target = to / name if inside else to
    if not target.parent.is_dir():
        fail(f"{target.parent} is not a local directory")
    with tempfile.SpooledTemporaryFile(SPOOL) as spool:
        got = ctx.call(lambda c: download(c, source.vm, source.path, spool))
        spool.seek(0)
        if got.is_tar:
            unpack(spool, target.parent, None if inside else target.name)
        elif target.is_dir():
            fail(f"{target} is a directory; {source} is a file")
        else:
            place_file(spool, target, got)
    return f"{source} -> {target} ({got.size} bytes)"


@click.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--user",
    default="",
    metavar="USER",
    help="Write into the VM as this user of its image (name or uid[:gid]) "
    "[default: the workload's user].",
)
@pass_ctx
def vms_cp(ctx: Context, src: str, dst: str, user: str) -> None:
    """Copy a file or a directory into or out of a VM's workload root.

    \b
      volar vms cp ./site web:/srv        ./site goes to /srv/site (/srv exists)
      volar vms cp web:/etc/hosts ./hosts
    """
    source, destination = source_and_destination(src, dst)
    if isinstance(destination, Remote):
        assert isinstance(source, Path)
        line = push(ctx, source, destination, user)
    else:
        assert isinstance(source, Remote)
        if user:
            raise click.UsageError("--user is for copies into a VM")
        line = pull(ctx, source, destination)
    click.echo(line)
