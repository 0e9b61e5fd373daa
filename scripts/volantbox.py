"""volantd as a real systemd service inside a sysbox: shared by the system tests, the demo and
the benchmarks.

The unit files from units/ are installed into the sandbox's overlay with a drop-in that points
ExecStart at this checkout's virtualenv; the REST API is reached with curl inside the sandbox,
whose network namespace holds the bridge, the taps and the guests.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.sysbox import Sysbox
from scripts.testplugin import write_test_plugin

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
GUEST = ROOT / ".cache" / "guest"
API = "http://127.0.0.1:7777"
# Files of the package, from this checkout, and where the package puts them.
PACKAGED = {
    "packaging/sysusers.d/volant.conf": "etc/sysusers.d",
    "packaging/tmpfiles.d/volant.conf": "etc/tmpfiles.d",
    "packaging/dbus/com.volantvm.Volant1.conf": "usr/share/dbus-1/system.d",
    "polkit/com.volantvm.volant1.policy": "usr/share/polkit-1/actions",
    "polkit/50-volant.rules": "etc/polkit-1/rules.d",
}


def volantd_config(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A volantd.yaml for tests and demos: QEMU on this checkout's guest, then `settings`.

    `settings` use the dotted names of the settings table ("runtime.start_paused": True).
    """
    config: dict[str, Any] = {
        "runtime": {
            "hypervisor": "qemu",
            "kernel": str(GUEST / "vmlinuz"),
            "initramfs": str(GUEST / "initramfs.img"),
            "stop_timeout": 15,
        },
        "vm": {"default_memory_mb": 192},
        # Every answer a test or the demo gets is checked against the OpenAPI document.
        "api": {"check_openapi": True},
    }
    for key, value in (settings or {}).items():
        section, _, leaf = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[leaf] = value
    return config


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


class VolantBox:
    """Drives a volantd.service inside `box`."""

    def __init__(self, box: Sysbox, service_extra: str = "") -> None:
        self.box = box
        self.service_extra = service_extra
        """More [Service] lines for the checkout drop-in (say, Environment= for a test)."""

    def install(
        self,
        settings: dict[str, Any] | None = None,
        plugins: Sequence[str] = ("demo",),
        *,
        start: bool = True,
    ) -> None:
        """Copy the units and a config into the overlay; start volantd; wait until active;
        install the test plugins (scripts/testplugin.py) that VMs of the busybox guest use.

        With start=False only the files are installed (`volar setup` starts the service).
        """
        root = self.box.root
        unit_dir = root / "etc/systemd/system"
        for unit in ("volantd.service", "volant.slice"):
            (unit_dir / unit).write_text((ROOT / "units" / unit).read_text())
        dropin = unit_dir / "volantd.service.d"
        dropin.mkdir(parents=True, exist_ok=True)
        # The hardened unit hides /tmp, /root and /home (PrivateTmp=, ProtectHome=), where a
        # checkout may live: bind it into the service's namespace, read-only.
        (dropin / "10-checkout.conf").write_text(
            f"[Service]\nExecStart=\nExecStart={VENV_BIN / 'volantd'}\n"
            f"BindReadOnlyPaths={ROOT}\n{self.service_extra}"
        )
        for source, target in PACKAGED.items():
            path = root / target / source.rsplit("/", 1)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text((ROOT / source).read_text())
        self.sh(
            "systemd-sysusers volant.conf && systemd-tmpfiles --create volant.conf && busctl call"
            " org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig"
        )
        etc = root / "etc/volant"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "volantd.yaml").write_text(yaml.safe_dump(volantd_config(settings)))
        self.sh("systemctl daemon-reload")
        if not start:
            return
        self.sh("systemctl start volantd")
        self.wait_healthy()
        for name in plugins:
            self.install_test_plugin(name)

    def install_test_plugin(self, name: str, **changes: Any) -> dict[str, Any]:
        """Write a test plugin into the box (under /srv/volant-test) and install (or replace) it
        over REST: a reinstall with new settings keeps the state, and so the plugin."""
        inside = Path("/srv/volant-test")
        manifest = write_test_plugin(self.box.root / inside.relative_to("/"), name, **changes)
        origin = (inside / manifest.name).as_uri()
        body = {"manifest": manifest.read_text(), "origin": origin, "replace": True}
        reply = self.api("POST", "/api/v1/plugins", body)
        assert reply.status == 201, reply
        return dict(reply.body)

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("curl", "-sf", f"{API}/healthz").returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"volantd is not healthy:\n{self.journal()}")

    def run(self, *argv: str, timeout: float = 120) -> Any:
        return self.box.run(list(argv), check=False, timeout=timeout)

    def sh(self, script: str, timeout: float = 120) -> str:
        proc = self.box.run(["/bin/sh", "-c", script], check=False, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{script!r} failed ({proc.returncode}): {proc.stderr}")
        return str(proc.stdout)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 180) -> Reply:
        argv = ["curl", "-sS", "-X", method, "-w", "\n%{http_code}", f"{API}{path}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        proc = self.run(*argv, timeout=timeout)
        text, _, code = proc.stdout.rpartition("\n")
        if proc.returncode != 0 or not code.isdigit():
            raise AssertionError(f"curl {method} {path} failed: {proc.stderr}")
        return Reply(int(code), json.loads(text) if text else None)

    def volar(self, *argv: str) -> Any:
        return self.run(str(VENV_BIN / "volar"), *argv)

    def vm(self, name: str) -> dict[str, Any]:
        reply = self.api("GET", f"/api/v1/vms/{name}")
        assert reply.status == 200, reply
        return dict(reply.body)

    def wait_status(self, name: str, status: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        vm: dict[str, Any] = {}
        while time.monotonic() < deadline:
            vm = self.vm(name)
            if vm["status"] == status:
                return vm
            time.sleep(0.2)
        raise AssertionError(f"{name} stayed {vm.get('status')}, wanted {status}")

    def guest_answer(self, ip: str, timeout: float = 120) -> str:
        """The guest's HTTP answer on port 8080, retried while it boots."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.run("curl", "-sS", "--max-time", "3", f"http://{ip}:8080/", timeout=10)
            if proc.returncode == 0 and proc.stdout:
                return str(proc.stdout)
            last = proc.stderr
            time.sleep(0.5)
        raise AssertionError(f"guest {ip} did not answer within {timeout}s: {last}")

    def scope_show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def scope_pids(self, unit: str) -> list[int]:
        cgroup = self.scope_show(unit, "ControlGroup")["ControlGroup"]
        text = self.sh(f"cat /sys/fs/cgroup{cgroup}/cgroup.procs")
        return [int(pid) for pid in text.split()]

    def journal(self, unit: str = "volantd", lines: int = 80) -> str:
        proc = self.run("journalctl", "-u", unit, "--no-pager", "-n", str(lines))
        return str(proc.stdout)
