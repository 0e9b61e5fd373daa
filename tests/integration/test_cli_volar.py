"""volar against a real volantd: system status and info, the boot progress on a pipe and on a
terminal, shell completion of VM names, the API key from volar.yaml, and an absent daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from scripts.guest.plugin_image import write_plugin_cpio
from tests.integration.daemon import (
    BIN,
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    netns,
    running_daemon,
    start_daemon,
    stop_daemon,
)
from tests.terminal import ANSI, HIDE_CURSOR, SHOW_CURSOR, in_pty, last_line

pytestmark = pytest.mark.integration

FINAL = re.compile(r"VM (\S+) is (\S+) at (192\.168\.127\.\d+) \((\d+\.\d) s\)")
TCP_API = "http://127.0.0.1:7777"
HELLO = ROOT / "examples" / "plugins" / "hello"


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def daemon(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("volantd")) as d:
        yield d


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without VOLANT_* (so no key or address leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLANT_")}
    return env | {"XDG_CONFIG_HOME": "/nonexistent"} | extra


def run(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=180, check=False, env=env
    )


def volar_in_ns(
    daemon: Daemon, *argv: str, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """volar inside the daemon's namespace, where TCP 127.0.0.1:7777 is volantd."""
    return run(["ip", "netns", "exec", daemon.ns, str(BIN / "volar"), *argv], env)


def test_system_status_and_info(daemon: Daemon) -> None:
    status = json.loads(daemon.volar("system", "status", "--json").stdout)
    assert status["ip_pool_subnet"] == "192.168.127.0/24"
    assert status["host"]["cpus"] == os.cpu_count()
    lines = daemon.volar("system", "status").stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "volantd",
        "VMs",
        "usage",
        "IP pool",
        "host",
        "memory",
        "up",
        "events",
    ]
    assert f"hypervisor {status['hypervisor']}" in lines[0]
    assert lines[3].endswith(f"of {status['ip_pool_total']} leased in 192.168.127.0/24")
    assert f"{os.cpu_count()} CPUs, " in lines[4]

    info = json.loads(daemon.volar("system", "info", "--json").stdout)
    assert (info["hypervisor"], info["api_version"], info["api_key_required"]) == (
        "qemu",
        "v1",
        False,
    )
    shown = dict(line.split(": ", 1) for line in daemon.volar("system", "info").stdout.splitlines())
    assert shown["hypervisor"].strip() == f"qemu (accel {info['accel']})"
    assert shown["network"].strip() == "bridge vbr0, 192.168.127.0/24, host 192.168.127.1"
    assert shown["API key"].strip() == "not required"


def test_boot_on_a_pipe_prints_only_the_final_line(daemon: Daemon) -> None:
    proc = daemon.volar("vms", "create", "piped", "--plugin", "demo")
    assert (proc.returncode, proc.stderr) == (0, "")
    match = FINAL.fullmatch(proc.stdout.rstrip("\n"))
    assert match is not None, proc.stdout
    assert match.group(1, 2) == ("piped", "running")

    assert daemon.volar("vms", "stop", "piped").stdout == "VM piped is stopped\n"
    for verb in ("start", "restart"):
        proc = daemon.volar("vms", verb, "piped")
        assert (proc.returncode, proc.stderr) == (0, "")
        assert FINAL.fullmatch(proc.stdout.rstrip("\n")), proc.stdout

    # Completion against the real daemon: bash asks with the words typed so far.
    line = ["volar", "--api", daemon.api, "vms", "get", "pi"]
    env = clean_env(_VOLAR_COMPLETE="bash_complete", COMP_WORDS=" ".join(line), COMP_CWORD="5")
    proc = run([str(BIN / "volar")], env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "plain,piped\n", "")
    ok = daemon.volar("vms", "delete", "piped")
    assert ok.returncode == 0
    proc = run([str(BIN / "volar")], env)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "", "")


def test_boot_on_a_terminal_shows_progress(daemon: Daemon) -> None:
    argv = [str(BIN / "volar"), "--api", daemon.api, "vms", "create", "tty", "--plugin", "demo"]
    try:
        code, screen = in_pty(argv, clean_env(TERM="xterm-256color"))
        assert code == 0, screen
        text = ANSI.sub("", screen)
        assert "creating tty…" in text
        assert re.search(r"tty: starting \(192\.168\.127\.\d+\)…", text), text
        assert FINAL.fullmatch(last_line(screen)), repr(screen)
        assert screen.rindex(SHOW_CURSOR) > screen.rindex(HIDE_CURSOR)
    finally:
        daemon.volar("vms", "delete", "tty")


def test_api_key_from_volar_yaml(guest: Path, tmp_path: Path) -> None:
    config = tmp_path / "volar.yaml"
    (tmp_path / "volantd").mkdir()
    with netns() as ns:
        d = start_daemon(ns, tmp_path / "volantd", {"api.key": "s3cret"}, plugins=())
        try:
            proc = volar_in_ns(d, "--api", TCP_API, "vms", "list", env=clean_env())
            assert proc.returncode == 1
            assert proc.stderr.splitlines()[0] == "volar: error: an API key is required"

            config.write_text(f"api: {TCP_API}\napi_key: s3cret\n")
            config.chmod(0o600)
            env = clean_env(VOLANT_CONFIG=str(config))
            proc = volar_in_ns(d, "system", "info", "--json", env=env)
            assert (proc.returncode, proc.stderr) == (0, "")
            assert json.loads(proc.stdout)["api_key_required"] is True

            config.chmod(0o644)
            proc = volar_in_ns(d, "vms", "list", env=env)
            assert proc.returncode == 0
            assert proc.stderr == (
                f"volar: warning: {config} holds api_key and every user can read it; "
                f"`chmod o-r {config}`\n"
            )

            # The environment wins over the file.
            config.write_text(f"api: {TCP_API}\napi_key: wrong\n")
            config.chmod(0o600)
            proc = volar_in_ns(d, "vms", "list", env=env)
            assert proc.stderr.startswith("volar: error: missing or wrong API key")
            proc = volar_in_ns(d, "vms", "list", env=env | {"VOLANT_API_KEY": "s3cret"})
            assert (proc.returncode, proc.stderr) == (0, "")
        finally:
            stop_daemon(d)

        # No daemon any more: its socket is gone, or (had it been killed) left behind unheard.
        hint = "hint: is volantd running? (systemctl status volantd) Set --api or VOLANT_API_BASE"
        proc = d.volar("vms", "list")
        assert (proc.returncode, proc.stderr.splitlines()) == (
            1,
            [f"volar: error: cannot reach volantd at {d.api}: no such socket", hint],
        )
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(d.api.removeprefix("unix:"))
        proc = d.volar("vms", "list")
        assert (proc.returncode, proc.stderr.splitlines()) == (
            1,
            [f"volar: error: cannot reach volantd at {d.api}: connection refused", hint],
        )
        proc = volar_in_ns(d, "--api", TCP_API, "system", "status", env=clean_env())
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[0] == (
            f"volar: error: cannot reach volantd at {TCP_API}: connection refused"
        )
        assert proc.stderr.splitlines()[1].startswith("hint: is volantd running?")


def test_a_socket_volar_may_not_open(daemon: Daemon) -> None:
    """An operator outside group volant: the hint says how to get in."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = run([*argv, str(BIN / "volar"), "--api", daemon.api, "vms", "list"], clean_env())
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"volar: error: cannot reach volantd at {daemon.api}: permission denied",
        "hint: the socket is for root and group volant: `sudo usermod -aG volant $USER` and "
        "log in again, or run volar with sudo",
    ]


def test_create_waits_for_a_healthy_workload(guest: Path, tmp_path: Path) -> None:
    """The signed hello example has a health check: volar answers once the agent says the
    workload is healthy, not when the hypervisor is up."""
    write_plugin_cpio(HELLO)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(ROOT / "examples" / "keys" / "volant-examples.pub", trusted)
    (tmp_path / "volantd").mkdir()
    settings = {
        "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
        "plugins.trusted_keys_dir": str(trusted),
    }
    with running_daemon(tmp_path / "volantd", settings, plugins=()) as d:
        assert d.volar("plugins", "install", str(HELLO / "manifest.json")).returncode == 0
        proc = d.volar("vms", "create", "hello1", "--plugin", "hello")
        assert (proc.returncode, proc.stderr) == (0, "")
        match = FINAL.fullmatch(proc.stdout.rstrip("\n"))
        assert match is not None, proc.stdout
        assert match.group(2) == "running"
        events = d.call(lambda c: c.list_events(vm="hello1"))
        assert [e["type"] for e in events] == ["VM_CREATED", "VM_STARTING", "VM_RUNNING"]
