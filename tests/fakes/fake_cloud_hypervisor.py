"""A FAKE of Cloud Hypervisor, for tests only: no CH binary exists on these machines.

It is the one fake this project allows (STYLE.md, convention 11). It does not run guests. It
checks a command line against CH's documented CLI (options and their keys, the payload rule), and
serves the REST endpoints Volant uses on a UNIX socket with the status codes and bodies that the
hypervisor reference (shared/reference/hypervisors.md, A.1-A.4) records for CH v53:

- GET vmm.ping -> 200 {build_version, version, pid, features}
- GET vm.info -> 200 {config, state, memory_actual_size}; 404 when no VM was created
- PUT vm.power-button -> 204; the guest powers off after `poweroff_delay` when `acpi_handled`,
  and then the VMM exits (socket removed), like CH without --no-shutdown
- PUT vm.shutdown -> 204; the VM is dropped and vm.info reports "Created" again
- PUT vmm.shutdown -> 200 with an empty body, then the VMM exits
- errors: a JSON array of strings, outermost first; a wrong method -> 400; unknown path -> 404.

With `--event-monitor path=FILE` it writes its events there as CH does (reference A.3): the file
truncated at start, each event pretty-printed JSON `{timestamp{secs,nanos}, source, event,
properties}` followed by a blank line; vmm starting, vm booting, vm booted at start; vm shutdown,
vm deleted, vmm shutdown before a clean exit (a guest power-off, vmm.shutdown). `guest_poweroff()`
plays a guest that powers itself off; `kill()` a SIGKILL (no events, the socket file stays).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web


def _keys(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Keys per option from the CLI table (reference A.1, vmm/src/config.rs).
OPTION_KEYS: dict[str, frozenset[str]] = {
    "--api-socket": frozenset({"path", "fd"}),
    "--cpus": _keys(
        "boot max topology kvm_hyperv max_phys_bits affinity features nested core_scheduling"
    ),
    "--memory": _keys(
        "size mergeable shared hugepages hugepage_size hotplug_method hotplug_size "
        "hotplugged_size prefault reserve thp"
    ),
    "--disk": _keys(
        "path readonly direct iommu num_queues queue_size vhost_user socket id pci_segment "
        "pci_device_id rate_limit_group queue_affinity serial backing_files sparse image_type "
        "lock_granularity bw_size bw_one_time_burst bw_refill_time ops_size ops_one_time_burst "
        "ops_refill_time"
    ),
    "--net": _keys(
        "tap ip mask mac host_mac mtu fd iommu num_queues queue_size id vhost_user socket "
        "vhost_mode offload_tso offload_ufo offload_csum bw_size bw_one_time_burst "
        "bw_refill_time ops_size ops_one_time_burst ops_refill_time pci_segment "
        "pci_device_id"
    ),
    "--rng": frozenset({"src", "iommu"}),
    "--serial": frozenset({"file", "socket"}),
    "--console": frozenset({"file", "iommu", "id"}),
    "--event-monitor": frozenset({"path", "fd"}),
    "--vsock": _keys("cid socket iommu id pci_segment pci_device_id"),
}
PATH_OPTIONS = frozenset({"--kernel", "--initramfs", "--cmdline", "--firmware"})
MULTI_OPTIONS = frozenset({"--disk", "--net"})
SERIAL_MODES = frozenset({"off", "null", "pty", "tty"})
VM_OPTIONS = frozenset(
    {"--cpus", "--memory", "--disk", "--net", "--rng", "--serial", "--console", "--vsock"}
)
_BOOL = frozenset({"on", "off", "true", "false", ""})
_SIZE = re.compile(r"\d+[KMG]?")


class CLIError(ValueError):
    """The argv would be refused by Cloud Hypervisor's argument parser."""


def _parse_kv(option: str, value: str) -> dict[str, str]:
    if option in ("--serial", "--console") and value in SERIAL_MODES:
        return {"mode": value}
    pairs: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if not sep:
            raise CLIError(f"{option}: {item!r} is not key=value")
        if key not in OPTION_KEYS[option]:
            raise CLIError(f"{option}: unknown key {key!r}")
        if key in pairs:
            raise CLIError(f"{option}: {key} given twice")
        pairs[key] = val
    if pairs.get("readonly", "") not in _BOOL:
        raise CLIError(f"{option}: readonly takes on|off|true|false")
    if option == "--memory" and not _SIZE.fullmatch(pairs.get("size", "512M")):
        raise CLIError(f"--memory: bad size {pairs['size']!r}")
    if option == "--vsock" and not (pairs.get("cid", "").isdigit() and int(pairs["cid"]) >= 3):
        raise CLIError("--vsock: cid must be a number >= 3")  # the OpenAPI's minimum
    if option == "--cpus" and not pairs.get("boot", "1").isdigit():
        raise CLIError("--cpus: boot must be a number")
    return pairs


def parse_cli(argv: list[str]) -> dict[str, Any]:
    """Parse argv (argv[0] is the binary) as CH would; raise CLIError where CH would refuse."""
    parsed: dict[str, Any] = {}
    args = iter(argv[1:])
    for option in args:
        value = next(args, None)
        if value is None or value.startswith("--"):
            raise CLIError(f"{option} needs a value")
        if option in PATH_OPTIONS:
            parsed[option] = value
        elif option in OPTION_KEYS:
            pairs = _parse_kv(option, value)
            if option in MULTI_OPTIONS:
                parsed.setdefault(option, []).append(pairs)
            elif option in parsed:
                raise CLIError(f"{option} given twice")
            else:
                parsed[option] = pairs
        else:
            raise CLIError(f"unknown option {option}")
    if VM_OPTIONS & parsed.keys() and not {"--kernel", "--firmware"} & parsed.keys():
        raise CLIError("VM options need a payload (--kernel or --firmware)")
    return parsed


def _size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def vm_config(parsed: dict[str, Any]) -> dict[str, Any]:
    """A VmConfig-shaped dict (the `config` of vm.info) for a parsed command line."""
    boot = int(parsed.get("--cpus", {}).get("boot", "1"))
    serial = parsed.get("--serial", {"mode": "null"})
    return {
        "cpus": {"boot_vcpus": boot, "max_vcpus": boot},
        "memory": {"size": _size_bytes(parsed.get("--memory", {}).get("size", "512M"))},
        "payload": {
            key: parsed[f"--{key}"]
            for key in ("kernel", "initramfs", "cmdline")
            if f"--{key}" in parsed
        },
        "net": parsed.get("--net", []),
        "disks": parsed.get("--disk", []),
        "serial": {"mode": "Socket", "socket": serial["socket"]} if "socket" in serial else serial,
        "rng": parsed.get("--rng", {"src": "/dev/urandom"}),
    }


Handler = Callable[[], Awaitable[web.Response]]


class FakeCloudHypervisor:
    """FAKE Cloud Hypervisor API server on a UNIX socket; `async with` starts and stops it."""

    def __init__(
        self,
        socket_path: Path,
        *,
        config: dict[str, Any] | None = None,
        acpi_handled: bool = True,
        poweroff_delay: float = 0.05,
        event_monitor: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.event_monitor = event_monitor
        self._started = time.monotonic()
        self.config = config or {}
        self.state: str | None = "Running" if config is not None else None
        self.acpi_handled = acpi_handled
        self.poweroff_delay = poweroff_delay
        self.requests: list[tuple[str, str]] = []
        self.exited = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._exit_task: asyncio.Task[None] | None = None
        self._routes: dict[str, tuple[str, Handler]] = {
            "vmm.ping": ("GET", self._ping),
            "vm.info": ("GET", self._info),
            "vm.power-button": ("PUT", self._power_button),
            "vm.shutdown": ("PUT", self._vm_shutdown),
            "vmm.shutdown": ("PUT", self._vmm_shutdown),
        }

    @classmethod
    def from_argv(cls, argv: list[str], **kw: Any) -> FakeCloudHypervisor:
        """A fake VMM as CH would start from argv: the VM is booted at once."""
        parsed = parse_cli(argv)
        monitor = parsed.get("--event-monitor", {}).get("path")
        return cls(
            Path(parsed["--api-socket"]["path"]),
            config=vm_config(parsed),
            event_monitor=None if monitor is None else Path(monitor),
            **kw,
        )

    async def __aenter__(self) -> FakeCloudHypervisor:
        if self.event_monitor is not None:
            self.event_monitor.write_bytes(b"")  # CH opens it with O_TRUNC
        self._event("vmm", "starting")
        if self.state == "Running":
            self._event("vm", "booting")
            self._event("vm", "booted")
        app = web.Application()
        app.router.add_route("*", "/api/v1/{endpoint}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        return self

    def _event(self, source: str, event: str) -> None:
        """Append one event to the event monitor file, as CH's monitor thread writes it."""
        if self.event_monitor is None:
            return
        elapsed = time.monotonic() - self._started
        secs = int(elapsed)
        record = {
            "timestamp": {"secs": secs, "nanos": int((elapsed - secs) * 1e9)},
            "source": source,
            "event": event,
            "properties": None,
        }
        with self.event_monitor.open("a") as out:
            out.write(json.dumps(record, indent=2) + "\n\n")

    def _vmm_shutdown_events(self) -> None:
        # vmm_shutdown -> vm_delete -> vm_shutdown when a VM is booted (vmm/src/lib.rs).
        if self.state in ("Running", "Paused"):
            self._event("vm", "shutdown")
        if self.state is not None:
            self._event("vm", "deleted")
        self._event("vmm", "shutdown")

    def guest_poweroff(self, delay: float = 0.0) -> None:
        """The guest powers itself off (ACPI S5): CH shuts the VM, deletes it and exits 0."""
        self._exit_later(delay)

    async def kill(self) -> None:
        """SIGKILL: the VMM is gone at once, with nothing written and its socket file left."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.state = None
        self.exited.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._exit_task is not None:
            await self._exit_task
        await self._exit()

    async def _exit(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.socket_path.unlink(missing_ok=True)
        self.exited.set()

    def _exit_later(self, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self._vmm_shutdown_events()
            self.state = None
            await self._exit()

        if self._exit_task is None:
            self._exit_task = asyncio.create_task(later())

    async def _dispatch(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        self.requests.append((request.method, endpoint))
        if endpoint not in self._routes:
            return web.Response(status=404)
        method, handler = self._routes[endpoint]
        if request.method != method:
            return web.Response(status=400)
        return await handler()

    @staticmethod
    def _error(status: int, *messages: str) -> web.Response:
        return web.json_response(list(messages), status=status)

    async def _ping(self) -> web.Response:
        body = {"build_version": "v53.0-fake", "version": "53.0", "pid": os.getpid()}
        return web.json_response({**body, "features": ["kvm"]})

    async def _info(self) -> web.Response:
        if self.state is None:
            return self._error(404, "Error from API", "The VM could not be found: not created")
        body = {"config": self.config, "state": self.state, "memory_actual_size": 0}
        if "memory" in self.config:
            body["memory_actual_size"] = self.config["memory"]["size"]
        return web.json_response(body)

    async def _power_button(self) -> web.Response:
        if self.state != "Running":
            return self._error(500, "Error from API", "The VM could not power off: not booted")
        if self.acpi_handled:
            self._exit_later(self.poweroff_delay)
        return web.Response(status=204)

    async def _vm_shutdown(self) -> web.Response:
        if self.state not in ("Running", "Paused"):
            return self._error(500, "Error from API", "The VM could not shut down: not booted")
        self.state = "Created"
        self._event("vm", "shutdown")
        return web.Response(status=204)

    async def _vmm_shutdown(self) -> web.Response:
        self._exit_later(0.0)
        return web.Response(status=200)
