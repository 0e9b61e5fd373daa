#!/usr/bin/env python3
"""Boot a real systemd as PID 1 of fresh namespaces, over a throw-away overlay of `/`.

The sandbox ("sysbox") gets new pid, mount, net, uts, ipc and cgroup namespaces, its own child
cgroup of the host's cgroup2 hierarchy, and an overlay of `/` whose upper layer is a tmpfs, so
systemd-tmpfiles and friends can write anywhere without touching the host. Nothing is mounted in
the host's mount namespace: the merged root is reachable from the host as /proc/<pid>/root.
Teardown kills the sandbox's cgroup (systemd, its children, anything entered with `run`) and
removes it.

    with Sysbox() as box:
        print(box.run(["systemctl", "is-system-running"], check=False).stdout)

CLI: `sysbox.py shell`, `sysbox.py run -- CMD...`, `sysbox.py reap` (remove leftovers of a
harness that was killed before it could clean up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CGROUP_PREFIX = "sysbox-"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOTED_STATES = ("running", "degraded")
SETTLED_STATES = (*BOOTED_STATES, "maintenance", "stopping")
INIT_STAGE = Path(__file__).with_name("sysbox_init.py")


class SysboxError(RuntimeError):
    """The sandbox could not be started, booted or torn down."""


@dataclass(frozen=True)
class BootReport:
    """How the boot ended: systemd's state, units that failed, and seconds since start."""

    state: str
    failed_units: tuple[str, ...]
    seconds: float


def cgroup2_root() -> Path:
    """Where the host's cgroup2 hierarchy is mounted (mounted once under /run if nowhere)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup2" and fields[3] == "/":
                return Path(fields[4])
    target = Path("/run/sysbox/cgroup2")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(target)], check=True)
    return target


def _populated(cgroup: Path) -> bool:
    try:
        events = (cgroup / "cgroup.events").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return "populated 1" in events


def kill_cgroup(cgroup: Path, timeout: float = 10.0) -> None:
    """SIGKILL every process in a cgroup subtree, wait until it is empty, then remove it."""
    if not cgroup.exists():
        return
    deadline = time.monotonic() + timeout
    while _populated(cgroup):
        try:
            (cgroup / "cgroup.kill").write_text("1", encoding="utf-8")
        except OSError:  # kernels before 5.14 have no cgroup.kill
            for procs in cgroup.rglob("cgroup.procs"):
                for pid in procs.read_text(encoding="utf-8").split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SysboxError(f"processes of {cgroup} survived SIGKILL")
        time.sleep(0.02)
    # Children before parents: rmdir only removes empty cgroups.
    for dirpath, _dirs, _files in sorted(os.walk(cgroup), key=lambda w: -len(w[0])):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def reap(*, everything: bool = False) -> list[str]:
    """Remove sandboxes whose harness process is gone (or all of them); return their names.

    Killing a sandbox's cgroup kills every process in it, and so the whole sandbox.
    """
    names = []
    for cgroup in sorted(cgroup2_root().glob(CGROUP_PREFIX + "*")):
        owner = cgroup.name.removeprefix(CGROUP_PREFIX).split("-")[0]
        if everything or not (owner.isdigit() and _alive(int(owner))):
            kill_cgroup(cgroup)
            names.append(cgroup.name)
    return names


def _clean_env(extra: Mapping[str, str] | None) -> list[str]:
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    env.update(extra or {})
    return [f"{key}={value}" for key, value in env.items()]


class Sysbox:
    """A systemd booted in its own namespaces; a context manager that always tears it down.

    `boot_timeout` is how long `__enter__` waits for `systemctl is-system-running` (None: do
    not wait). `hostname` names the uts namespace. `binds` are host directories bound into
    the sandbox read-write (the project's own tree always is, wherever it lives). `keep_log`
    keeps the init stage's output (`log_path`) after teardown; systemd itself logs to the
    sandbox's journal.
    """

    def __init__(
        self,
        *,
        boot_timeout: float | None = 60.0,
        hostname: str = "sysbox",
        binds: Sequence[str] = (),
        keep_log: bool = False,
    ) -> None:
        self.boot_timeout = boot_timeout
        self.hostname = hostname
        self.binds = tuple(binds)
        self.keep_log = keep_log
        self.ident = uuid.uuid4().hex[:12]
        # The harness's pid in the name lets `reap` tell orphans from live sandboxes.
        self.cgroup = cgroup2_root() / f"{CGROUP_PREFIX}{os.getpid()}-{self.ident}"
        self.log_path = Path(tempfile.gettempdir()) / f"sysbox-{self.ident}.log"
        self.pid = 0
        """PID 1 of the sandbox (systemd), as the host sees it."""
        self.boot: BootReport | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._spawned: list[subprocess.Popen[str]] = []

    @property
    def root(self) -> Path:
        """The sandbox's `/` (the merged overlay) as a host path; write files into it."""
        return Path(f"/proc/{self.pid}/root")

    def __enter__(self) -> Sysbox:
        try:
            self.start()
            if self.boot_timeout is not None:
                self.wait_until_booted(self.boot_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create the cgroup, fork the init stage in new namespaces and wait for systemd."""
        reap()  # sandboxes of harnesses that were killed before they could clean up
        self.cgroup.mkdir()
        config = {"cgroup": str(self.cgroup), "hostname": self.hostname, "binds": self._binds()}
        self._started = time.monotonic()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # A new session keeps a terminal's Ctrl-C away from systemd, which would reboot on it.
        self._launcher = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc", "--net",
             "--propagation=private", sys.executable, "-I", str(INIT_STAGE), json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
        )  # fmt: skip
        os.close(fd)
        self.pid = self._wait_for_systemd(timeout=15.0)

    def _binds(self) -> list[str]:
        # The project (with its .venv and .cache) is always bound in: the overlay shows only
        # the root filesystem, and the sandbox's own /tmp and /run hide checkouts below them.
        binds = [str(Path(path).resolve()) for path in self.binds]
        project = str(Path(__file__).resolve().parent.parent)
        return binds if project in binds else [*binds, project]

    def _wait_for_systemd(self, timeout: float) -> int:
        assert self._launcher is not None
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self._launcher.pid}/task/{self._launcher.pid}/children")
        while time.monotonic() < deadline:
            if self._launcher.poll() is not None:
                break
            with contextlib.suppress(OSError):
                pids = children.read_text(encoding="utf-8").split()
                if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                    return int(pids[0])
            time.sleep(0.01)
        raise SysboxError(f"systemd did not start in the sandbox:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the init stage's output (its errors, before systemd takes over)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_booted(self, timeout: float = 60.0) -> BootReport:
        """Wait for `systemctl is-system-running` to say running or degraded; report failures."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline and state not in SETTLED_STATES:
            if state != "unknown":
                time.sleep(0.05)  # the manager's private socket is not there yet
            with contextlib.suppress(subprocess.TimeoutExpired):
                state = (
                    self.run(
                        ["systemctl", "is-system-running", "--wait"],
                        check=False,
                        timeout=max(1.0, deadline - time.monotonic()),
                    ).stdout.strip()
                    or "offline"
                )
        failed = self.run(
            ["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--full"],
            check=False,
        ).stdout.splitlines()
        report = BootReport(
            state=state,
            failed_units=tuple(line.split()[0] for line in failed if line.strip()),
            seconds=time.monotonic() - self._started,
        )
        if state not in BOOTED_STATES:
            journal = self.run(["journalctl", "-b", "--no-pager", "-n", "60"], check=False)
            raise SysboxError(
                f"systemd did not boot within {timeout}s (state {state}, failed units: "
                f"{', '.join(report.failed_units) or 'none'}):\n{journal.stdout}{self.log_tail()}"
            )
        self.boot = report
        return report

    @contextlib.contextmanager
    def _exec_cgroup(self) -> Iterator[Path]:
        # Each command runs in a leaf of the sandbox's cgroup: systemd can only move processes
        # it can see (transient scopes), and a timeout can kill all the command left behind.
        leaf = self.cgroup / f"sysbox-exec-{uuid.uuid4().hex[:8]}"
        leaf.mkdir()
        try:
            yield leaf
        finally:
            kill_cgroup(leaf)

    def _command(
        self,
        argv: Sequence[str],
        leaf: Path,
        *,
        cwd: str = "/",
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The host argv that runs argv inside the sandbox's namespaces and cgroup leaf."""
        return [
            "/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(leaf / "cgroup.procs"),
            "nsenter", "--target", str(self.pid), "--all", "--root", "--",
            "/usr/bin/env", "-i", "-C", cwd, *_clean_env(env), *argv,
        ]  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        input: str | None = None,
        cwd: str = "/",
        env: Mapping[str, str] | None = None,
        capture_output: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox and wait; whatever it leaves running is killed after."""
        with self._exec_cgroup() as leaf:
            return subprocess.run(
                self._command(argv, leaf, cwd=cwd, env=env),
                check=check,
                timeout=timeout,
                input=input,
                capture_output=capture_output,
                text=True,
            )

    def spawn(
        self, argv: Sequence[str], *, cwd: str = "/", env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start argv inside the sandbox with stdin/stdout pipes (stderr is inherited).

        It lives until it exits or the sandbox is torn down.
        """
        leaf = self.cgroup / f"sysbox-spawn-{uuid.uuid4().hex[:8]}"
        leaf.mkdir()
        proc = subprocess.Popen(
            self._command(argv, leaf, cwd=cwd, env=env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._spawned.append(proc)
        return proc

    def close(self) -> None:
        """Kill everything in the sandbox and remove its cgroup; idempotent."""
        kill_cgroup(self.cgroup)
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._launcher.kill()
                self._launcher.wait()
            self._launcher = None
        for proc in self._spawned:
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self._spawned.clear()
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)


def _interactive(box: Sysbox, argv: Sequence[str], cwd: str) -> int:
    # Ctrl-C belongs to the command inside; a handler (unlike SIG_IGN) is not inherited.
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    try:
        return box.run(argv, check=False, timeout=None, cwd=cwd, capture_output=False).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: shell, run -- CMD..., reap."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-log", action="store_true", help="keep systemd's console log")
    parser.add_argument("--cwd", default=os.getcwd(), help="working directory inside")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("shell", help="boot and open an interactive shell inside")
    run = sub.add_parser("run", help="boot, run a command inside, tear down")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    reaper = sub.add_parser("reap", help="remove sandboxes left behind by killed harnesses")
    reaper.add_argument("--all", action="store_true", help="also live ones of other harnesses")
    args = parser.parse_args(argv)
    if args.verb == "reap":
        for name in reap(everything=args.all):
            print(f"removed {name}")
        return 0
    cmd = list(getattr(args, "cmd", []))
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    with Sysbox(keep_log=args.keep_log) as box:
        assert box.boot is not None
        print(
            f"sysbox {box.ident}: {box.boot.state} in {box.boot.seconds:.2f}s, pid {box.pid}, "
            f"failed units: {', '.join(box.boot.failed_units) or 'none'}, log {box.log_path}",
            file=sys.stderr,
        )
        return _interactive(box, cmd or ["/bin/bash", "-l"], args.cwd)


if __name__ == "__main__":
    sys.exit(main())
