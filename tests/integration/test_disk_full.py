"""A full disk under volantd: its state and run directories on small tmpfs mounts.

Each write that finds no room (SQLite's "database or disk is full", the artifact cache, a VM's
run directory) fails its request with InsufficientStorage (HTTP 507) and leaves nothing behind;
reads keep working, running guests keep running, and once space is freed the same request
succeeds. The mounts are made for the test and removed after it; nothing else is filled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from scripts.testplugin import write_test_plugin
from tests.integration.daemon import Daemon, build_guest, raw, running_daemon, wait_status
from volant.model import InsufficientStorage, VMSpec
from volant.network import mac_for
from volant.store import SqliteStore

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# Room for the database and its WAL, the 1 MiB reserve and the combined initramfs (the test
# guest's 1.2 MB image with the plugin's archive appended); the filler takes the rest.
STATE_SIZE = 12 * MIB
RUN_SIZE = MIB


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of size bytes at path for the test's duration."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "volant-test", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def filled(directory: Path, leave: int) -> Iterator[Path]:
    """A file that takes all but about `leave` bytes of directory's filesystem; removed
    on the way out (that is how a test frees space again)."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(free(directory) - leave, 1))
    try:
        yield filler
    finally:
        filler.unlink(missing_ok=True)


def qemu_of(name: str, run: Path) -> list[int]:
    """pids of hypervisors whose command line names the VM's run directory."""
    marker = f"{run}/vms/{name}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def taps(d: Daemon) -> int:
    return sum(" vt-" in line for line in d.in_ns("ip", "-o", "link").stdout.splitlines())


def leased(d: Daemon) -> int:
    return int(d.call(lambda c: c.system_status())["ip_pool_leased"])


def hint(where: Path) -> str:
    return f"free space on the filesystem of {where} (`df -h {where}`), then try again"


def create(d: Daemon, name: str, plugin: str = "demo") -> tuple[int, Any]:
    status, _, body = raw(d, "POST", "/api/v1/vms", {"name": name, "plugin": plugin})
    return status, body


def assert_gone(d: Daemon, name: str, run: Path) -> None:
    """Nothing of a VM whose create failed: row, lease, tap, hypervisor, files."""
    status, _, body = raw(d, "GET", f"/api/v1/vms/{name}")
    assert (status, body["code"]) == (404, "NotFound")
    vms = d.call(lambda c: c.list_vms())
    assert leased(d) == len(vms)
    assert taps(d) == len([vm for vm in vms if vm["status"] == "running"])
    assert qemu_of(name, run) == []
    assert not (run / "vms" / name).exists()
    assert not (d.tmp / "state" / "consoles" / f"{name}.log").exists()


def assert_serving(d: Daemon, running: list[str]) -> None:
    """Reads answer, and the VMs made before the disk filled are still running."""
    names = [vm["name"] for vm in d.call(lambda c: c.list_vms())]
    assert sorted(names) == sorted(running)
    for name in running:
        assert d.call(lambda c, n=name: c.get_vm(n))["status"] == "running"
        assert qemu_of(name, d.tmp / "run")
    assert d.call(lambda c: c.system_info())["version"]
    assert d.call(lambda c: c.list_events(vm=running[0]))


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture
def daemon(guest: Path, tmp_path: Path) -> Iterator[Daemon]:
    with (
        tmpfs(tmp_path / "state", STATE_SIZE),
        tmpfs(tmp_path / "run", RUN_SIZE),
        running_daemon(tmp_path, {"vm.default_memory_mb": 128}) as d,
    ):
        yield d


def test_creates_until_the_state_directory_is_full(daemon: Daemon, tmp_path: Path) -> None:
    d, state, run = daemon, tmp_path / "state", tmp_path / "run"
    # A guest that boots, so its console log is being written when the disk fills up.
    assert create(d, "first")[0] == 201
    wait_status(d, "first", "running")
    made = ["first"]
    with filled(state, leave=256 * 1024) as filler:
        for n in range(40):
            status, body = create(d, f"vm{n}")
            if status != 201:
                break
            made.append(f"vm{n}")
        else:
            pytest.fail("40 VMs fitted in 256 KiB")
        assert (status, body["code"], body["title"]) == (
            507,
            "InsufficientStorage",
            "Insufficient storage",
        )
        assert body["detail"] == (
            f"cannot write the state database state.db: no space left on device ({state})"
        )
        assert body["hint"] == hint(state)
        assert_gone(d, f"vm{n}", run)
        assert_serving(d, made)

        # The reserve went to the clean-up; until it is back, new VMs are refused up front.
        status, body = create(d, "refused")
        assert (status, body["code"]) == (507, "InsufficientStorage")
        assert body["detail"].startswith("no room to record anything new in the state database")
        assert_gone(d, "refused", run)
        proc = d.volar("vms", "create", "refused", "--plugin", "demo")
        assert proc.returncode == 1
        lines = proc.stderr.splitlines()
        assert lines[0].startswith("volar: error: no room to record anything new"), proc.stderr
        assert lines[1] == f"hint: {hint(state)}"

        # A guest whose console log cannot grow runs on, and its log still reads.
        assert d.call(lambda c: c.console_log("first"))
        assert filler.exists()

    # Space again: the same request succeeds.
    assert create(d, "again")[0] == 201
    assert_serving(d, [*made, "again"])
    assert "Traceback" not in d.log_text()


def big_plugin(directory: Path, size: int) -> dict[str, Any]:
    """An install request for a plugin whose initramfs has size bytes."""
    manifest = json.loads(write_test_plugin(directory, "big").read_text())
    artifact = directory / "big-initramfs.img"
    artifact.write_bytes(os.urandom(size))
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    manifest["initramfs"] = {"path": artifact.name, "checksum": f"sha256:{digest}"}
    path = directory / "big.json"
    path.write_text(json.dumps(manifest))
    return {"manifest": path.read_text(), "origin": path.as_uri()}


def test_a_plugin_whose_artifacts_do_not_fit(daemon: Daemon, tmp_path: Path) -> None:
    d, state = daemon, tmp_path / "state"
    request = big_plugin(tmp_path / "big", 4 * MIB)
    artifacts = state / "artifacts"
    before = sorted(p.name for p in (artifacts / "sha256").iterdir())
    with filled(state, leave=2 * MIB):
        status, _, body = raw(d, "POST", "/api/v1/plugins", request)
        assert (status, body["code"]) == (507, "InsufficientStorage"), body
        artifact = tmp_path / "big" / "big-initramfs.img"
        assert body["detail"] == (
            f"cannot cache initramfs {artifact}: no space left on device ({artifacts})"
        )
        assert raw(d, "GET", "/api/v1/plugins/big")[0] == 404
        assert sorted(p.name for p in (artifacts / "sha256").iterdir()) == before
        assert list((artifacts / "tmp").iterdir()) == []
        assert [p["name"] for p in d.call(lambda c: c.list_plugins())] == ["demo"]
    status, _, body = raw(d, "POST", "/api/v1/plugins", request)
    assert (status, body["name"]) == (201, "big")


def test_a_full_run_directory(daemon: Daemon, tmp_path: Path) -> None:
    """The hypervisor needs room for its pid file and log in the VM's run directory; a
    manifest too long for the kernel command line needs room there for its config disk."""
    d, run = daemon, tmp_path / "run"
    env = {f"VAR{n}": "x" * 100 for n in range(1500)}  # a config disk of about 160 KiB
    d.install_plugin("chatty", workload={"type": "process", "entrypoint": ["true"], "env": env})
    with filled(run, leave=0):
        status, body = create(d, "demo1")
        assert (status, body["code"]) == (507, "InsufficientStorage")
        assert body["detail"] == (
            "no room for the hypervisor's files of VM demo1: less than 64 KiB free "
            f"({run / 'vms' / 'demo1'})"
        )
        assert_gone(d, "demo1", run)
    with filled(run, leave=100 * 1024):
        status, body = create(d, "chatty", plugin="chatty")
        assert (status, body["code"]) == (507, "InsufficientStorage")
        where = run / "vms" / "chatty"
        assert body["detail"] == (
            f"cannot write the files of VM chatty: no space left on device ({where})"
        )
        assert_gone(d, "chatty", run)
        events = [e["type"] for e in d.call(lambda c: c.list_events(vm="chatty"))]
        assert (events[0], events[-1]) == ("VM_CREATED", "VM_DELETED")
    assert create(d, "demo1")[0] == 201
    status, body = create(d, "chatty", plugin="chatty")
    assert status == 201, body
    assert (run / "vms" / "chatty" / "config.img").stat().st_size > 150 * 1024


def test_the_reserve_lets_a_failed_request_undo_its_first_half(tmp_path: Path) -> None:
    """The store alone: a create whose second write finds the disk full can still delete
    what its first write made (without the reserve SQLite could not write that DELETE)."""

    async def scenario(state: Path) -> None:
        store = await SqliteStore.open(state / "state.db")
        await store.ensure_pool(IPv4Network("10.9.0.0/24"), {IPv4Address("10.9.0.1")})
        await store.add_plugin("{}", "demo", "1.0", "qemu", "sha256:" + "0" * 64)
        vm = VMSpec(name="half", plugin="demo", cpu_cores=1, memory_mb=128)
        await store.create_vm(vm, runtime="qemu", unit="", mac_for=mac_for)
        with filled(state, leave=0):
            with pytest.raises(InsufficientStorage, match="cannot write the state database"):
                await store.update_vm("half", kernel_cmdline="x" * 20000)
            assert not (state / "state.db.reserve").exists()
            await store.delete_vm("half")  # the undo
            with pytest.raises(InsufficientStorage, match="no room to record anything new"):
                await store.create_vm(vm, runtime="qemu", unit="", mac_for=mac_for)
            assert await store.list_vms() == []
        await store.create_vm(vm, runtime="qemu", unit="", mac_for=mac_for)
        assert (state / "state.db.reserve").stat().st_size == 1024 * 1024
        await store.close()

    with tmpfs(tmp_path / "state", 4 * MIB) as state:
        asyncio.run(scenario(state))
