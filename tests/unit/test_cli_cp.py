"""`volar vms cp` before any daemon is asked: which side is the VM's, usage errors, and the tars
it packs and unpacks (modes, mtimes, links kept; a hostile tar from a VM refused)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from volant.cli.cp import Remote, parse_location, source_and_destination, tar_of, unpack
from volant.cli.main import cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("web:/srv/site", Remote("web", "/srv/site")),
        ("web:/", Remote("web", "/")),
        ("./web:/x", Path("./web:/x")),
        ("/tmp/web:/x", Path("/tmp/web:/x")),
        ("site", Path("site")),
        ("Not_A_VM:/x", Path("Not_A_VM:/x")),
        ("C:", Path("C:")),
    ],
)
def test_a_vm_path_is_name_colon_absolute_path(text: str, parsed: Remote | Path) -> None:
    assert parse_location(text) == parsed


def test_a_relative_path_in_a_vm_is_a_usage_error() -> None:
    with pytest.raises(click.BadParameter, match=r"absolute \(web:/srv\)"):
        parse_location("web:srv")


@pytest.mark.parametrize(
    ("src", "dst", "said"),
    [
        ("./a", "./b", "name a VM path on one side"),
        ("web:/a", "db:/b", "the other is local"),
        ("web:a", "./b", "absolute"),
    ],
)
def test_cp_needs_exactly_one_vm_side(src: str, dst: str, said: str) -> None:
    result = CliRunner().invoke(cli, ["vms", "cp", src, dst], prog_name="volar")
    assert result.exit_code == 2
    assert said in result.output
    if src.startswith("web:/") is False and dst.startswith("./"):
        return
    with pytest.raises(click.UsageError):
        source_and_destination(src, dst)


def test_user_is_only_for_copies_into_a_vm() -> None:
    result = CliRunner().invoke(cli, ["vms", "cp", "--user", "root", "web:/a", "./b"])
    assert result.exit_code == 2
    assert "--user is for copies into a VM" in result.output


def test_a_directory_round_trips_with_modes_mtimes_and_links(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(site / "run.sh", 0o750)
    os.utime(site / "run.sh", (1_600_000_000, 1_600_000_000))
    (site / "sub" / "a.txt").write_text("a\n")
    (site / "link").symlink_to("run.sh")
    spool = io.BytesIO()
    size = tar_of(site, spool)
    assert size == len(spool.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    unpack(spool, out, "renamed")
    got = out / "renamed"
    assert (got / "sub" / "a.txt").read_text() == "a\n"
    assert stat.S_IMODE((got / "run.sh").stat().st_mode) == 0o750
    assert (got / "run.sh").stat().st_mtime == 1_600_000_000
    assert os.readlink(got / "link") == "run.sh"
    assert (got / "run.sh").stat().st_uid == os.getuid()


def _tar(*members: tuple[str, str]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
    out.seek(0)
    return out


@pytest.mark.parametrize(
    "members",
    [
        [("../escape", "")],
        [("/abs", "")],
        [("d/l", "/"), ("d/l/escape", "")],
        [("d/l", "/tmp"), ("d/l/escape", "")],
    ],
)
def test_a_hostile_tar_from_a_vm_is_refused(tmp_path: Path, members: list[tuple[str, str]]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit):
        unpack(_tar(*members), out, None)
    assert not (tmp_path / "escape").exists()
    assert not Path("/escape").exists()
    assert not Path("/tmp/escape").exists()


def test_a_file_over_a_symlink_of_the_same_tar_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    unpack(_tar(("l", "../escape"), ("l", "")), out, None)
    assert (out / "l").read_bytes() == b"x\n"
    assert not (out / "l").is_symlink()
    assert not (tmp_path / "escape").exists()


def test_a_truncated_tar_is_a_clear_error(tmp_path: Path) -> None:
    whole = _tar(("a", ""), ("b", "")).getvalue()
    with pytest.raises(SystemExit):
        unpack(io.BytesIO(whole[:700]), tmp_path, None)
