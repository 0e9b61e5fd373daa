"""Cloud Hypervisor launcher: its CLI and its REST API on the per-VM API socket.

Console log: CH does not copy serial output to a file while it serves `--serial socket=`. The
supervisor is expected to attach to spec.serial_socket and append what it reads to
spec.console_log (CH v53+ buffers the output produced before a client attaches); until then the
console log of a CH guest stays empty. `--serial file=` would log, but leave no interactive console.

CH boots the payload given on its command line at once and has no "start paused" flag, so
spec.start_paused is refused here rather than silently ignored.

Why CH ended is read from its `--event-monitor` file in the run dir (volant.runtime.ch_events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from volant.model import (
    AgentChannel,
    ChannelKind,
    HypervisorEnd,
    HypervisorFailed,
    InvalidArgument,
    LaunchSpec,
)
from volant.runtime.agentlink import HYBRID_SOCKET, agent_relay
from volant.runtime.ch_events import EVENTS_FILE, read_end

log = logging.getLogger(__name__)

API_BASE = "http://localhost/api/v1/"
REQUEST_TIMEOUT = 5.0
POLL_INTERVAL = 0.1
SHUTDOWN_GRACE = 5.0  # kept back from a graceful shutdown's timeout for vmm.shutdown


class CloudHypervisorAPIError(HypervisorFailed):
    """CH answered with a non-2xx status; `messages` is its error chain, outermost first."""

    def __init__(self, endpoint: str, status: int, messages: list[str]) -> None:
        detail = "; ".join(messages) or "no details"
        super().__init__(f"cloud-hypervisor {endpoint} failed with HTTP {status}: {detail}")
        self.endpoint = endpoint
        self.status = status
        self.messages = messages


class CloudHypervisorUnreachable(HypervisorFailed):
    """Nothing answers on the API socket (CH not started yet, or already gone)."""


def _error_messages(body: bytes) -> list[str]:
    # v47+ sends a JSON array of strings; v44-v46 sent a plain string.
    try:
        decoded = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return [text] if text else []
    if isinstance(decoded, list):
        return [str(item) for item in decoded]
    return [str(decoded)]


class CloudHypervisorAPI:
    """Client of CH's HTTP API over its UNIX socket; use as an async context manager."""

    def __init__(self, socket_path: Path, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CloudHypervisorAPI:
        connector = aiohttp.UnixConnector(path=str(self.socket_path))
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, endpoint: str) -> Any:
        if self._session is None:
            raise RuntimeError("CloudHypervisorAPI used outside `async with`")
        try:
            async with self._session.request(method, API_BASE + endpoint) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise CloudHypervisorUnreachable(
                f"cloud-hypervisor API {self.socket_path} does not answer {endpoint}: {exc!r}"
            ) from exc
        if not 200 <= status < 300:
            raise CloudHypervisorAPIError(endpoint, status, _error_messages(body))
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise HypervisorFailed(f"cloud-hypervisor {endpoint}: invalid JSON reply") from exc

    async def ping(self) -> dict[str, Any]:
        """GET vmm.ping: build_version, version, pid, features."""
        return dict(await self._request("GET", "vmm.ping") or {})

    async def vm_info(self) -> dict[str, Any]:
        """GET vm.info: config, state (Created|Running|Shutdown|Paused), memory_actual_size."""
        return dict(await self._request("GET", "vm.info") or {})

    async def power_button(self) -> None:
        """PUT vm.power-button: an ACPI power-button press the guest must act on."""
        await self._request("PUT", "vm.power-button")

    async def vm_shutdown(self) -> None:
        """PUT vm.shutdown: stop the guest at once; the VMM process and its API stay."""
        await self._request("PUT", "vm.shutdown")

    async def vmm_shutdown(self) -> None:
        """PUT vmm.shutdown: stop the guest (if any) and end the VMM process."""
        await self._request("PUT", "vmm.shutdown")


def _value(path: Path | str, what: str) -> str:
    # CH splits each option on commas and has no escape for them.
    text = str(path)
    if "," in text:
        raise InvalidArgument(f"{what} {text!r} contains a comma, which Cloud Hypervisor refuses")
    return text


class CloudHypervisorDriver:
    """Hypervisor driver for Cloud Hypervisor (kind "cloud-hypervisor")."""

    kind: str = "cloud-hypervisor"

    def __init__(self, *, binary: str = "cloud-hypervisor") -> None:
        self.binary = binary

    def kernel_extras(self) -> list[str]:
        """CH guests run on KVM with kvmclock and a virtio-rng device: nothing to add."""
        return []

    def agent_channel(self, cid: int) -> AgentChannel:
        """A network-less VM's channel: CH's hybrid vsock (a unix socket, no vhost-vsock)."""
        return AgentChannel(ChannelKind.HYBRID, cid)

    def for_vm(self, spec: LaunchSpec) -> CloudHypervisorVM:
        return CloudHypervisorVM(self, spec)

    def argv(self, spec: LaunchSpec) -> list[str]:
        """The CH command line for spec (see the CLI table in the hypervisor reference)."""
        if spec.start_paused:
            raise InvalidArgument("cloud-hypervisor cannot start a VM paused", field="start_paused")
        argv = [self.binary, "--api-socket", f"path={_value(spec.api_socket, 'API socket')}"]
        events = _value(spec.run_dir / EVENTS_FILE, "event monitor file")
        argv += ["--event-monitor", f"path={events}"]
        argv += ["--kernel", _value(spec.kernel, "kernel")]
        if spec.initramfs is not None:
            argv += ["--initramfs", _value(spec.initramfs, "initramfs")]
        argv += ["--cmdline", spec.cmdline]
        argv += ["--cpus", f"boot={spec.cpus}", "--memory", f"size={spec.memory_mb}M"]
        if spec.tap is not None:
            argv += ["--net", f"tap={spec.tap},mac={spec.mac}"]
        if spec.agent_channel is not None:
            hybrid = _value(spec.run_dir / HYBRID_SOCKET, "vsock socket")
            argv += ["--vsock", f"cid={spec.agent_channel.cid},socket={hybrid}"]
        argv += ["--serial", f"socket={_value(spec.serial_socket, 'serial socket')}"]
        argv += ["--console", "off", "--rng", "src=/dev/urandom"]
        for disk in spec.all_disks:
            # Auto-detection of image types is deprecated since v52: say raw.
            readonly = "on" if disk.read_only else "off"
            option = f"path={_value(disk.path, 'disk')},readonly={readonly},image_type=raw"
            argv += ["--disk", f"{option},serial={_value(disk.serial, 'disk serial')}"]
        return argv


class CloudHypervisorVM:
    """One VM's Cloud Hypervisor process, driven through spec.api_socket."""

    kind: str = "cloud-hypervisor"

    def __init__(self, driver: CloudHypervisorDriver, spec: LaunchSpec) -> None:
        self._driver = driver
        self.spec = spec

    def command(self) -> list[str]:
        return self._driver.argv(self.spec)

    @contextlib.asynccontextmanager
    async def api(self, timeout: float = REQUEST_TIMEOUT) -> AsyncIterator[CloudHypervisorAPI]:
        async with CloudHypervisorAPI(self.spec.api_socket, timeout=timeout) as api:
            yield api

    async def wait_ready(self, timeout: float) -> None:
        """Ping vmm.ping until it answers; raise HypervisorFailed after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Exception | None = None
        async with self.api(timeout=min(timeout, REQUEST_TIMEOUT)) as api:
            while loop.time() < deadline:
                try:
                    await api.ping()
                except HypervisorFailed as exc:
                    last = exc
                else:
                    return
                await asyncio.sleep(POLL_INTERVAL)
        raise HypervisorFailed(
            f"cloud-hypervisor for {self.spec.name} did not answer within {timeout:.0f}s "
            f"({last or 'no attempt'})"
        )

    async def _wait_gone(self, api: CloudHypervisorAPI, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await api.ping()
            except CloudHypervisorUnreachable:
                return True
            except HypervisorFailed:
                pass
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)

    async def shutdown(self, *, graceful: bool, timeout: float) -> bool:
        """Power button first when graceful, then vmm.shutdown; True once the API is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.api(timeout=min(timeout, REQUEST_TIMEOUT)) as api:
            try:
                if graceful and await self._press_power_button(api):
                    grace = deadline - loop.time() - min(SHUTDOWN_GRACE, timeout / 2)
                    if await self._wait_gone(api, grace):
                        return True
                    log.info("%s ignored the power button; stopping the VMM", self.spec.name)
                await api.vmm_shutdown()
            except CloudHypervisorUnreachable:
                pass  # already gone, or it hung up while exiting: _wait_gone tells
            except CloudHypervisorAPIError as exc:
                log.warning("%s: %s", self.spec.name, exc)
            return await self._wait_gone(api, deadline - loop.time())

    async def _press_power_button(self, api: CloudHypervisorAPI) -> bool:
        try:
            await api.power_button()
        except CloudHypervisorAPIError as exc:
            # e.g. no booted VM: there is nothing to press, so stop the VMM straight away.
            log.info("%s: %s", self.spec.name, exc)
            return False
        return True

    async def follow(self) -> None:
        """CH keeps its events in a file (read by end_cause): there is nothing to hold open but
        a network-less VM's agent relay, until the engine stops following."""
        async with agent_relay(self.spec) as relaying:
            if relaying:
                await asyncio.Future()

    async def end_cause(self, timeout: float) -> HypervisorEnd:
        """Why CH ended, from its event file. CH has exited by now and wrote all it will, so
        timeout is not needed."""
        return await asyncio.to_thread(read_end, self.spec.run_dir / EVENTS_FILE)

    async def info(self) -> dict[str, Any]:
        """VM state and CH version; raises HypervisorFailed when CH does not answer."""
        async with self.api() as api:
            ping = await api.ping()
            vm = await api.vm_info()
        state = str(vm.get("state", "unknown"))
        return {
            "hypervisor": self.kind,
            "status": state.lower(),
            "running": state == "Running",
            "version": str(ping.get("version", "")),
            "memory_actual_size": vm.get("memory_actual_size"),
        }
