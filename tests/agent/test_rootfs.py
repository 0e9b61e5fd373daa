"""The agent's side of rootfs plugins, on real files: paths confined to the image's root, the
workload's user from the image's passwd and group, the storage document, and a workload
chrooted as that user (needs root, as the guest agent is)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest
from volant_agent.logs import LogBuffer
from volant_agent.manifest import RestartPolicy, Workload
from volant_agent.paths import PathError, check_path, read_in_root, resolve_in_root, write_in_root
from volant_agent.rootfs import (
    Mount,
    Storage,
    _module_names,
    allow_low_ports,
    ip_fields,
    is_new_volume,
    parse_storage,
    take_owner_and_mode,
    write_etc,
)
from volant_agent.users import Identity, UserError, resolve_user
from volant_agent.workload import Health, Supervisor

pytestmark = pytest.mark.unit

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "# a comment\n"
    "garbage line\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    "broken:x:notanumber:1:b:/:/bin/sh\n"
)
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app,www-data\nvideo:x:44:app\nwww-data:x:33:\n"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["relative", "/a/../b", "/", "//", "/a/\0"])
def test_unclean_paths_are_refused(path: str) -> None:
    with pytest.raises(PathError):
        check_path(path)


def test_clean_paths_are_normalised() -> None:
    assert check_path("/srv//data/./x/") == "/srv/data/x"


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "abs").symlink_to(outside)  # an absolute link means root/<outside>, not outside
    (root / "up").symlink_to("../../../../..")
    (root / "loop").symlink_to("loop")
    made = resolve_in_root(root, "/abs/data", make_dirs=True)
    assert made.is_relative_to(root)
    assert made.is_dir()
    assert not (outside / "data").exists()
    assert resolve_in_root(root, "/up/etc") == root / "etc"
    with pytest.raises(PathError, match="symbolic links"):
        resolve_in_root(root, "/loop/x")


def test_writes_replace_a_link_instead_of_following_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (root / "etc" / "hosts").symlink_to(victim)
    write_in_root(root, "/etc/hosts", b"mine\n")
    assert victim.read_text() == "keep"
    assert (root / "etc" / "hosts").read_text() == "mine\n"
    assert not (root / "etc" / "hosts").is_symlink()


def test_reads_are_bounded_and_regular_files_only(image: Path) -> None:
    assert read_in_root(image, "/etc/group", 1 << 20) == GROUP.encode()
    with pytest.raises(PathError, match="larger"):
        read_in_root(image, "/etc/passwd", 10)
    with pytest.raises(PathError, match="regular"):
        read_in_root(image, "/etc", 10)


# -- users ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "identity"),
    [
        (None, Identity(0, 0, (0,), "root", "/root")),
        ("app", Identity(1000, 1000, (44, 50, 1000), "app", "/home/app")),
        ("1000", Identity(1000, 1000, (44, 50, 1000), "app", "/home/app")),
        ("www-data:staff", Identity(33, 50, (50,), "www-data", "/var/www")),
        ("app:33", Identity(1000, 33, (33, 44, 50), "app", "/home/app")),
        ("4242", Identity(4242, 0, (0,), "", "/")),  # a bare uid need not be in passwd
        ("4242:4243", Identity(4242, 4243, (4243,), "", "/")),
    ],
)
def test_users_resolve_in_the_image(image: Path, spec: str | None, identity: Identity) -> None:
    assert resolve_user(spec, image) == identity


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nobody", "'nobody' is not in the image's /etc/passwd"),
        ("app:nogroup", "group 'nogroup' is not in the image's /etc/group"),
        ("broken", "no valid uid"),
    ],
)
def test_bad_users_are_clear_errors(image: Path, spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_user(spec, image)


def test_passwd_behind_a_link_is_read_inside_the_image(image: Path, tmp_path: Path) -> None:
    (image / "etc" / "passwd").rename(image / "passwd.real")
    (image / "etc" / "passwd").symlink_to("/passwd.real")
    assert resolve_user("app", image).uid == 1000
    (image / "etc" / "passwd").unlink()
    (image / "etc" / "passwd").symlink_to("/etc")  # a directory: refused, not a crash
    with pytest.raises(UserError, match="cannot read"):
        resolve_user("app", image)


def test_an_image_without_passwd_knows_only_numbers(tmp_path: Path) -> None:
    assert resolve_user("7", tmp_path).uid == 7
    with pytest.raises(UserError):
        resolve_user("app", tmp_path)


# -- the storage document ------------------------------------------------------------------------


def test_storage_parses() -> None:
    doc = {
        "rootfs": {"serial": "volant-rootfs", "format": "erofs"},
        "upper": {"serial": "volant-upper"},
        "mounts": [{"serial": "vol-data", "path": "/srv//data", "read_only": True}],
    }
    assert parse_storage(doc) == Storage(
        "volant-rootfs", "erofs", "volant-upper", (Mount("vol-data", "/srv/data", True),)
    )
    tmpfs = {"rootfs": {"serial": "r", "format": "squashfs"}, "upper": {"tmpfs": True}}
    assert parse_storage(tmpfs).upper_serial == ""
    assert parse_storage({"mounts": []}) == Storage()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rootfs": {"serial": "r", "format": "xfs"}, "upper": {"tmpfs": True}}, "format"),
        ({"rootfs": {"serial": "r", "format": "erofs"}}, "storage.upper"),
        ({"rootfs": {"serial": "x" * 21, "format": "erofs"}, "upper": {"tmpfs": True}}, "serial"),
        ({"mounts": [{"serial": "v", "path": "/a/../../etc"}]}, "leaves its root"),
        ({"mounts": [{"serial": "v", "path": "data"}]}, "not an absolute path"),
        ({"mounts": "x"}, "must be a list"),
    ],
)
def test_bad_storage_is_refused(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_storage(doc)


def test_etc_files_for_the_guest(tmp_path: Path) -> None:
    cmdline = "console=ttyS0 ip=192.168.127.5::192.168.127.1:255.255.255.0:web:eth0:off quiet"
    assert ip_fields(cmdline)[:3] == ["192.168.127.5", "", "192.168.127.1"]
    write_etc(tmp_path, cmdline)
    name = os.uname().nodename
    assert (tmp_path / "etc" / "hostname").read_text() == f"{name}\n"
    assert f"192.168.127.5 {name}\n" in (tmp_path / "etc" / "hosts").read_text()
    assert (tmp_path / "etc" / "resolv.conf").read_text() == "nameserver 192.168.127.1\n"
    write_etc(tmp_path, "ip=10.0.0.2::10.0.0.1:255.0.0.0:x:eth0:off:9.9.9.9:1.1.1.1")
    assert (tmp_path / "etc" / "resolv.conf").read_text() == (
        "nameserver 9.9.9.9\nnameserver 1.1.1.1\n"
    )
    # volantd's dnsmasq answers at the gateway for the guests' domain.
    write_etc(tmp_path, f"{cmdline} volant.domain=vm.internal")
    assert (tmp_path / "etc" / "resolv.conf").read_text() == (
        "search vm.internal\nnameserver 192.168.127.1\n"
    )


# -- a chrooted workload -------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and setuid need root")
def test_the_workload_runs_chrooted_as_the_user(image: Path) -> None:
    (image / "bin").mkdir()
    shutil.copy("/bin/busybox", image / "bin" / "busybox")
    (image / "home" / "app").mkdir(parents=True)
    os.chown(image / "home" / "app", 1000, 1000)
    script = "id -u; id -G; pwd; echo $HOME $USER $GREETING; ls /; touch /home/app/made"
    workload = Workload(
        entrypoint=("/bin/busybox", "sh", "-c", script),
        env={"GREETING": "hi", "PATH": "/bin"},
        user="app",
        restart=RestartPolicy.NEVER,
    )
    logs = LogBuffer()
    supervisor = Supervisor(workload, logs, root=image, identity=resolve_user("app", image))
    asyncio.run(asyncio.wait_for(supervisor.run(), 30))
    out = [line.text for line in logs.recent() if line.stream == "stdout"]
    assert out[:4] == ["1000", "1000 44 50", "/home/app", "/home/app app hi"]
    assert set(out[4:]) == {"bin", "etc", "home"}  # the image's root, not the host's
    assert (image / "home" / "app" / "made").stat().st_uid == 1000
    assert supervisor.last_exit == 0


def test_a_missing_workdir_is_said_plainly(image: Path) -> None:
    workload = Workload(entrypoint=("/bin/true",), workdir="/nope", restart=RestartPolicy.NEVER)
    logs = LogBuffer()
    supervisor = Supervisor(workload, logs, root=image, identity=Identity(0, 0))
    asyncio.run(asyncio.wait_for(supervisor.run(), 30))
    assert any("workdir /nope is not a directory" in line.text for line in logs.recent())


def test_a_failed_workload_never_starts() -> None:
    supervisor = Supervisor(Workload(entrypoint=("/bin/true",)), LogBuffer())
    supervisor.fail("workload.user 'x' is not in the image's /etc/passwd")
    asyncio.run(asyncio.wait_for(supervisor.run(), 5))
    assert supervisor.health is Health.FAILED
    assert supervisor.status()["error"] == "workload.user 'x' is not in the image's /etc/passwd"
    assert supervisor.last_exit is None


def test_only_the_formats_modules_are_listed(tmp_path: Path) -> None:
    listing = tmp_path / "storage-modules"
    listing.write_text("erofs: libcrc32c erofs\nsquashfs: squashfs\noverlay: overlay\n")
    assert _module_names(listing, ("overlay", "erofs")) == ["libcrc32c", "erofs", "overlay"]
    assert _module_names(listing, ("overlay", "ext4")) == ["overlay"]  # ext4 is built in
    assert _module_names(tmp_path / "missing", ("erofs",)) == []


def test_a_new_volume_takes_the_images_directory_owner_and_mode(tmp_path: Path) -> None:
    volume, image_dir = tmp_path / "volume", tmp_path / "data"
    (volume / "lost+found").mkdir(parents=True)
    image_dir.mkdir(mode=0o750)
    os.chown(image_dir, 100, 101)
    assert is_new_volume(volume)
    take_owner_and_mode(volume, image_dir)
    st = volume.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (100, 101, 0o750)
    (volume / "appendonly.aof").write_text("SET k v")
    assert not is_new_volume(volume)


def test_low_ports_are_opened_to_every_user(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("1024\n")
    allow_low_ports(sysctl)
    assert sysctl.read_text() == "0\n"
