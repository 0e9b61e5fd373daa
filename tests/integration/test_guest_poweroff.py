"""A guest that powers itself off is `stopped` (VM_STOPPED, reason guest), also once a restarted
volantd has re-adopted it; a panic, a reboot and a killed hypervisor stay `crashed`, each with
its reason. A real volantd (process supervisor) and real QEMU guests, driven from inside through
their console shell."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    Daemon,
    build_guest,
    netns,
    running_daemon,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.test_console import ANSWER, ASK, converse
from volant.client import VolantClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    with running_daemon(tmp_path_factory.mktemp("volantd")) as d:
        yield d


def from_inside(daemon: Daemon, name: str, command: str) -> None:
    """Type command into the guest's console shell; return once the console closes (the
    hypervisor exited), or fail after 120 s with the console's tail."""

    async def run(client: VolantClient) -> None:
        async with client.console(name) as stream:
            await converse(stream, ASK, ANSWER, timeout=90)
            await stream.send(command.encode() + b"\n")
            seen = b""
            try:
                async with asyncio.timeout(120):
                    while (data := await stream.receive()) is not None:
                        seen = (seen + data)[-2000:]
            except TimeoutError:
                tail = seen.decode(errors="replace")
                pytest.fail(f"the guest still runs 120 s after {command!r}:\n{tail}")

    daemon.call(run)


def last_event(daemon: Daemon, name: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = daemon.call(lambda c: c.list_events(vm=name))
    return events[-1]


def taps(daemon: Daemon) -> list[str]:
    out = daemon.in_ns("ip", "-o", "link", "show", "type", "tun").stdout
    return [line.split(": ")[1] for line in out.splitlines() if ": vt-" in line]


def test_guest_poweroff_is_a_stop(daemon: Daemon) -> None:
    daemon.call(lambda c: c.create_vm({"name": "off", "plugin": "demo"}))
    from_inside(daemon, "off", "poweroff")
    vm = wait_status(daemon, "off", "stopped")
    assert (vm["pid"], vm["status_reason"]) == (None, "the guest powered itself off")
    last = last_event(daemon, "off")
    assert (last["type"], last["payload"]["reason"]) == ("VM_STOPPED", "guest")
    assert taps(daemon) == []
    assert "VM off stopped: the guest powered itself off" in daemon.log_text()
    assert daemon.volar("vms", "get", "off").stdout.count("the guest powered itself off") == 1

    # A stopped VM starts again; its reason goes with the stop.
    vm = daemon.call(lambda c: c.start_vm("off"))
    assert (vm["status"], vm["status_reason"]) == ("running", "")
    os.kill(vm["pid"], signal.SIGKILL)
    vm = wait_status(daemon, "off", "crashed")
    assert vm["status_reason"] == "hypervisor killed by SIGKILL"
    last = last_event(daemon, "off")
    assert last["type"] == "VM_CRASHED"
    assert last["payload"] == {
        "status": "crashed",
        "ip_address": vm["ip_address"],
        "pid": None,
        "reason": "hypervisor killed by SIGKILL",
        "cause": "unknown",
        "exit_status": -9,
    }
    assert taps(daemon) == []
    daemon.call(lambda c: c.delete_vm("off"))


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("echo c > /proc/sysrq-trigger", "the guest kernel panicked"),
        ("reboot -f", "the guest rebooted or reset itself (volant does not restart it)"),
    ],
    ids=["panic", "reboot"],
)
def test_guest_panic_and_reboot_are_crashes(daemon: Daemon, command: str, reason: str) -> None:
    daemon.call(lambda c: c.create_vm({"name": "fall", "plugin": "demo"}))
    from_inside(daemon, "fall", command)
    vm = wait_status(daemon, "fall", "crashed")
    assert vm["status_reason"] == reason
    last = last_event(daemon, "fall")
    assert (last["type"], last["payload"]["reason"]) == ("VM_CRASHED", reason)
    daemon.call(lambda c: c.delete_vm("fall"))


def restart(daemon: Daemon) -> Daemon:
    """Stop volantd, leaving its VMs running, and start it again on the same state."""
    stop_daemon(daemon, delete_vms=False)
    return start_daemon(daemon.ns, daemon.tmp)


def test_guest_poweroff_after_readoption(tmp_path: Path) -> None:
    build_guest()
    with netns() as ns:
        daemon = start_daemon(ns, tmp_path)
        try:
            daemon.call(lambda c: c.create_vm({"name": "kept", "plugin": "demo"}))
            daemon = restart(daemon)
            assert "adopted VM kept" in daemon.log_text()
            vm = daemon.call(lambda c: c.get_vm("kept"))
            assert vm["status"] == "running"
            # Adopted, it is no child of this volantd: no exit status, only QEMU's word.
            from_inside(daemon, "kept", "poweroff")
            vm = wait_status(daemon, "kept", "stopped")
            assert vm["status_reason"] == "the guest powered itself off"
            last = last_event(daemon, "kept")
            assert (last["type"], last["payload"]["reason"]) == ("VM_STOPPED", "guest")
            assert taps(daemon) == []

            # ...and a SIGKILL of an adopted QEMU is still a crash.
            pid = daemon.call(lambda c: c.start_vm("kept"))["pid"]
            daemon = restart(daemon)
            os.kill(pid, signal.SIGKILL)
            vm = wait_status(daemon, "kept", "crashed")
            assert vm["status_reason"] == (
                "hypervisor ended without saying why (exit status unknown)"
            )
            assert last_event(daemon, "kept")["type"] == "VM_CRASHED"
        finally:
            stop_daemon(daemon)
