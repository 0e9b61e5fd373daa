"""`volar vms exec` and the exec REST routes on a real QEMU guest (TCG) of a rootfs plugin
(tests/integration/rootfs_images.py: busybox, user app, /srv/ballast), under a real volantd.

Covers: output streams as it comes, stdout and stderr apart, and volar exits with the command's
code; the command runs in the workload's root as its user (the image's /srv, not the agent's
initramfs); --env, --workdir, --user; stdin from a pipe; --timeout (124); a missing command
(127) and an unknown user; an interactive pty through `volar vms exec -it` driven from a pty
here (a resize, and the terminal restored after); REST's whole and NDJSON answers and its
output cap; the concurrency limit; the VM_EXEC events; a VM that does not run.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import select
import shlex
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    BIN,
    GUEST_DIR,
    Daemon,
    build_guest,
    netns,
    raw,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.mcp_client import call, ok, over_unix, results
from tests.integration.rootfs_images import rootfs_image, write_rootfs_plugin
from tests.readme import blocks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, taps and QEMU need root"),
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "workloads.md"
VM = "web"  # as docs/workloads.md names it
MAX_PER_VM = 2
OUTPUT_KB = 1


KEY = "exec-test-key"
SETTINGS = {
    "api.key": KEY,
    "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
    "runtime.boot_timeout": 90,
    "exec.max_per_vm": MAX_PER_VM,
    "exec.max_output_kb": OUTPUT_KB,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    state = tmp_path_factory.mktemp("volantd")
    with netns() as ns:
        d = start_daemon(ns, state, SETTINGS, plugins=())
        try:
            path = write_rootfs_plugin(d.tmp / "plugins", "app", rootfs_image())
            body = {"manifest": path.read_text(), "origin": path.as_uri()}
            assert raw(d, "POST", "/api/v1/plugins", body)[0] == 201
            status, _, vm = raw(d, "POST", "/api/v1/vms", {"name": VM, "plugin": "app"})
            assert status == 201, vm
            try:
                wait_status(d, VM, "running", timeout=150)
            except AssertionError:
                reason = d.call(lambda c: c.get_vm(VM)).get("status_reason")
                console = d.call(lambda c: c.console_log(VM, 60)).decode(errors="replace")
                raise AssertionError(f"{VM} did not run: {reason}\n{console}") from None
            yield d
        finally:
            stop_daemon(d)


def volar(daemon: Daemon, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "volar"), "--api", daemon.api, *argv],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_output_streams_as_it_comes_and_volar_exits_with_its_code(daemon: Daemon) -> None:
    script = "echo first; echo oops >&2; sleep 3; echo second; exit 3"
    proc = subprocess.Popen(
        [str(BIN / "volar"), "--api", daemon.api, "vms", "exec", VM, "--", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"first\n"
    assert proc.poll() is None  # the first line came while the command still ran
    out, err = proc.communicate(timeout=60)
    assert out == b"second\n"
    assert err == b"oops\n"
    assert proc.returncode == 3


def test_it_runs_in_the_workload_root_as_its_user(daemon: Daemon) -> None:
    done = volar(daemon, "vms", "exec", VM, "--", "sh", "-c", "id -u; pwd; ls /srv; ls /")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[:3] == ["1000", "/home/app", "ballast"]  # the image's, not the initramfs'
    assert "init" not in lines[3:]


def test_the_documented_commands(daemon: Daemon) -> None:
    done = []
    for line in blocks("exec", DOC.read_text()):
        done.append(subprocess.run(
            ["sh", "-c", line],
            env={"PATH": f"{BIN}:{os.environ['PATH']}", "VOLANT_API_BASE": daemon.api},
            capture_output=True, text=True, timeout=120, check=False,
        ))  # fmt: skip
    listing, where, env, piped, slow = done
    assert [p.returncode for p in done] == [0, 0, 0, 0, 124], [p.stderr for p in done]
    assert any(row.startswith("d") and row.endswith(" srv") for row in listing.stdout.split("\n"))
    assert where.stdout == "1000\n/home/app\nballast\n"
    assert env.stdout == "hi\n"
    assert piped.stdout == "line\n"
    assert "timed out after 1s" in slow.stderr


def test_a_closed_pipe_ends_the_command(daemon: Daemon) -> None:
    volar_argv = f"{BIN / 'volar'} --api {daemon.api} vms exec {VM} -- sh -c"
    script = "'while true; do echo y; done'"
    done = subprocess.run(
        ["bash", "-c", f"{volar_argv} {script} | head -n 3; echo ${{PIPESTATUS[0]}}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout == "y\ny\ny\n141\n", done.stderr
    assert "Traceback" not in done.stderr


def test_env_workdir_user_and_stdin(daemon: Daemon) -> None:
    done = volar(
        daemon, "vms", "exec", "--user", "root", "--workdir", "/tmp", "--env", "GREETING=hi",
        VM, "--", "sh", "-c", "id -u; pwd; echo $GREETING $HOME",
    )  # fmt: skip
    assert done.stdout.split("\n")[:3] == ["0", "/tmp", "hi /root"], done.stderr
    text = "".join(f"line {n}\n" for n in range(2000))
    piped = volar(daemon, "vms", "exec", VM, "--", "cat", stdin=text)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == text


def test_timeout_missing_command_and_unknown_user(daemon: Daemon) -> None:
    slow = volar(daemon, "vms", "exec", "--timeout", "1", VM, "--", "sleep", "60")
    assert slow.returncode == 124
    assert "timed out after 1s" in slow.stderr
    missing = volar(daemon, "vms", "exec", VM, "--", "no-such-command")
    assert missing.returncode == 127
    assert "command not found: no-such-command" in missing.stderr
    nobody = volar(daemon, "vms", "exec", "--user", "nobody", VM, "--", "id")
    assert nobody.returncode == 1
    assert "'nobody' is not in the image's /etc/passwd" in nobody.stderr


def read_until(master: int, wanted: bytes, seen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wanted!r} never came; saw {bytes(seen)!r}")
        if select.select([master], [], [], left)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError as exc:
                msg = f"the terminal closed before {wanted!r}: {bytes(seen)!r}"
                raise AssertionError(msg) from exc


def test_an_interactive_pty_resizes_and_restores_the_terminal(daemon: Daemon) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    before = termios.tcgetattr(slave)
    documented = shlex.split(blocks("exec-it", DOC.read_text())[0])  # volar vms exec -it …
    proc = subprocess.Popen(
        [str(BIN / "volar"), "--api", daemon.api, *documented[1:]],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    seen = bytearray()
    try:
        deadline = time.monotonic() + 60
        while termios.tcgetattr(slave) == before:  # raw once the shell runs
            assert time.monotonic() < deadline, "volar never put the terminal in raw mode"
            time.sleep(0.1)
        os.write(master, b"stty size; [ -t 0 ] && echo on-a-$((1+1))tty\n")
        read_until(master, b"on-a-2tty\r\n", seen)
        assert b"30 100" in seen
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        time.sleep(1)
        os.write(master, b"stty size; exit 7\n")
        read_until(master, b"40 120", seen)
        assert proc.wait(timeout=60) == 7
        assert termios.tcgetattr(slave) == before  # the terminal as it was
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_rest_answers_whole_capped_or_streamed(daemon: Daemon) -> None:
    body = {"argv": ["sh", "-c", "cat; echo err >&2; exit 2"], "stdin": "from stdin\n"}
    status, ctype, reply = raw(daemon, "POST", f"/api/v1/vms/{VM}/exec", body)
    assert (status, ctype) == (200, "application/json")
    assert reply["exit_code"] == 2
    assert (reply["stdout"], reply["stderr"], reply["truncated"]) == (
        "from stdin\n",
        "err\n",
        False,
    )

    big = {"argv": ["sh", "-c", "cat /srv/ballast | head -c 5000"]}
    status, _, reply = raw(daemon, "POST", f"/api/v1/vms/{VM}/exec", big)
    assert status == 200
    assert reply["truncated"] is True
    assert reply["output_limit_bytes"] == OUTPUT_KB * 1024

    stream = {"argv": ["sh", "-c", "echo a; echo b >&2"], "stream": True}
    status, ctype, text = raw_text(daemon, f"/api/v1/vms/{VM}/exec", stream)
    assert (status, ctype) == (200, "application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    chunks = {(d["stream"], base64.b64decode(d["data"])) for d in lines[:-1]}
    assert chunks == {("stdout", b"a\n"), ("stderr", b"b\n")}
    assert lines[-1]["exit_code"] == 0


def raw_text(daemon: Daemon, path: str, body: Any) -> tuple[int, str, str]:
    proc = subprocess.run(
        ["curl", "-sS", "--unix-socket", daemon.api.removeprefix("unix:"), "-o", "-",
         "-w", "\n%{http_code} %{content_type}", "-H", "Content-Type: application/json",
         "--data-binary", json.dumps(body), f"http://localhost{path}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text, _, tail = proc.stdout.rpartition("\n")
    code, _, ctype = tail.partition(" ")
    return int(code), ctype, text


def test_the_concurrency_limit(daemon: Daemon) -> None:
    argv = [str(BIN / "volar"), "--api", daemon.api, "vms", "exec", VM, "--",
            "sh", "-c", "echo started; exec sleep 60"]  # fmt: skip
    holders = []
    try:
        for _ in range(MAX_PER_VM):
            holder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            holders.append(holder)
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"started\n"  # its command runs: a slot taken
        body = {"argv": ["sh", "-c", ":"]}
        status, _, reply = raw(daemon, "POST", f"/api/v1/vms/{VM}/exec", body)
        assert status == 409, reply
        assert reply["detail"] == f"VM '{VM}' already runs {MAX_PER_VM} commands (exec.max_per_vm)"
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGINT)  # volar forwards it: the sleep ends, 130
        codes = [holder.wait(timeout=60) for holder in holders]
    assert codes == [130] * MAX_PER_VM
    status, _, reply = raw(daemon, "POST", f"/api/v1/vms/{VM}/exec", body)
    assert status == 200, reply  # the slots are free again


def test_the_mcp_tool(daemon: Daemon) -> None:
    steps = [
        call("exec_command", name=VM, argv=["sh", "-c", "ls /srv; echo e >&2; exit 4"]),
        call("exec_command", name=VM, argv=["sleep", "30"], timeout=1),
        call("exec_command", name=VM, argv=["head", "-c", "3000", "/srv/ballast"],
             max_output_bytes=100),
    ]  # fmt: skip
    first, slow, big = (ok(r) for r in results(over_unix(daemon.api, steps)))
    assert (first["exit_code"], first["stdout"], first["stderr"]) == (4, "ballast\n", "e\n")
    assert (slow["exit_code"], slow["timed_out"]) == (124, True)
    assert big["truncated"] is True
    assert len(big["stdout"]) <= 100  # 100 bytes decoded, bad ones replaced


def test_who_may_exec(daemon: Daemon) -> None:
    """Over TCP the API key; on the unix socket polkit's manage-vms, which nobody (uid 65534,
    with no polkit daemon here) lacks, for both forms."""
    url = f"http://127.0.0.1:7777/api/v1/vms/{VM}/exec"
    curl = ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json"]
    body = json.dumps({"argv": ["id", "-u"]})
    answers = []
    for key in ([], ["-H", f"X-Volant-API-Key: {KEY}"]):
        proc = daemon.in_ns(*curl, *key, "--data", body, url)
        answer, _, code = proc.stdout.rpartition("\n")
        answers.append((code, json.loads(answer)))
    assert (answers[0][0], answers[0][1]["code"]) == ("401", "Unauthenticated")
    assert (answers[1][0], answers[1][1]["stdout"]) == ("200", "1000\n")

    sock = Path(daemon.api.removeprefix("unix:"))
    # Let nobody reach and connect: polkit, not the file modes, is what is tested.
    opened = [sock, *(d for d in sock.parents if d != Path("/"))]
    modes = {p: p.stat().st_mode for p in opened}
    sock.chmod(0o666)
    for directory in opened[1:]:
        directory.chmod(modes[directory] | 0o111)
    try:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        refused = []
        for method, path in (("POST", f"/api/v1/vms/{VM}/exec"), ("GET", f"/ws/v1/vms/{VM}/exec")):
            proc = subprocess.run(
                [*nobody, *curl, "--unix-socket", str(sock), "-X", method,
                 *(["--data", body] if method == "POST" else []), f"http://localhost{path}"],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            answer, _, code = proc.stdout.rpartition("\n")
            assert answer, proc.stderr
            refused.append((code, json.loads(answer)["code"]))
    finally:
        for opened_path, mode in modes.items():
            opened_path.chmod(mode)
    assert refused == [("403", "PermissionDenied")] * 2


def test_every_exec_is_an_event(daemon: Daemon) -> None:
    volar(daemon, "vms", "exec", VM, "--", "sh", "-c", "exit 5")
    events = daemon.call(lambda c: c.request("GET", f"/api/v1/events?vm={VM}&type=VM_EXEC"))
    last = events["events"][-1]["payload"]
    assert last["argv"] == ["sh", "-c", "exit 5"]
    assert last["exit_code"] == 5
    assert last["caller"] == "uid 0 (root)"
    callers = {e["payload"]["caller"] for e in events["events"]}
    assert {"mcp uid 0", "api-key"} <= callers
    timed = [e["payload"] for e in events["events"] if e["payload"].get("timed_out")]
    assert timed
    assert timed[-1]["exit_code"] == 124


def test_volantd_stopping_ends_an_exec(daemon: Daemon) -> None:
    argv = [str(BIN / "volar"), "--api", daemon.api, "vms", "exec", VM, "--", "sleep", "600"]
    holder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # the exec is running in the guest
    stop_daemon(daemon, delete_vms=False)
    try:
        _, err = holder.communicate(timeout=30)
    finally:
        again = start_daemon(daemon.ns, daemon.tmp, SETTINGS, plugins=())
        daemon.proc = again.proc
    assert holder.returncode == 1
    assert "volantd ended the exec" in err
    wait_status(daemon, VM, "running", timeout=60)  # adopted by the new volantd
    assert volar(daemon, "vms", "exec", VM, "--", "sh", "-c", ":").returncode == 0


def test_a_vm_that_does_not_run(daemon: Daemon) -> None:
    daemon.call(lambda c: c.stop_vm(VM))
    done = volar(daemon, "vms", "exec", VM, "--", "true")
    assert done.returncode == 1
    assert f"VM '{VM}' is stopped" in done.stderr
    status, _, reply = raw(daemon, "POST", f"/api/v1/vms/{VM}/exec", {"argv": ["sh", "-c", ":"]})
    assert status == 409
    assert reply["code"] == "InvalidState"
