"""Verbs that reach into a running guest through its agent: health gate, actions, OpenAPI, logs.

`GuestVerbs` is a base of `Engine`. The agent listens on the guest's address, port 8080, and
answers only requests carrying the VM's agent secret; the engine only ever talks to it for VMs
that are running (or starting, for the health gate).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from volant.config import Config
from volant.engine.agentports import Guest, GuestReplyLike
from volant.engine.ports import Store
from volant.model import (
    AgentEndpoint,
    InvalidState,
    Manifest,
    NetworkMode,
    NotFound,
    Unavailable,
    VirtualMachine,
    VMStatus,
)
from volant.model.validate import validate_name
from volant.plugins.fetch import fetch_bytes
from volant.plugins.manifest import validate_document
from volant.runtime.agentlink import AGENT_SOCKET

log = logging.getLogger("volant.engine.engine")

MAX_OPENAPI_BYTES = 4 * 1024 * 1024
# Beyond the action's own timeout: the agent answers 504 itself when the workload is late.
ACTION_GRACE = 5.0


def vm_manifest(vm: VirtualMachine) -> Manifest:
    """The manifest the VM was created with."""
    if not vm.manifest_json:
        raise NotFound(f"VM {vm.name!r} was created without a plugin manifest")
    return validate_document(json.loads(vm.manifest_json))


def health_budget(config: Config, manifest: Manifest) -> float | None:
    """Seconds the guest gets to report its workload healthy; None when nothing is checked."""
    check = manifest.workload.health_check
    if check is None:
        return None
    return config.runtime_boot_timeout + check.start_period_ms / 1000


class GuestVerbs:
    """Actions, OpenAPI and logs of a VM's workload; a base of Engine."""

    config: Config
    store: Store
    guest: Guest

    async def call_action(
        self, name: str, action: str, *, body: bytes = b"", content_type: str = ""
    ) -> GuestReplyLike:
        """Run one of the plugin's actions in the VM; the workload's answer comes back as is."""
        vm = await self.store.get_vm(validate_name(name))
        return await self._action(vm, action, body, content_type)

    async def call_plugin_action(
        self, plugin: str, action: str, *, body: bytes = b"", content_type: str = ""
    ) -> GuestReplyLike:
        """Run an action in the first running VM (by name) of the plugin."""
        await self.store.get_plugin(validate_name(plugin, "plugin"))
        running = [
            vm
            for vm in await self.store.list_vms()
            if vm.plugin == plugin and vm.status == VMStatus.RUNNING
        ]
        if not running:
            raise InvalidState(
                f"no VM of plugin {plugin!r} is running to take action {action!r}",
                hint=f"`volar vms create NAME --plugin {plugin}`",
            )
        return await self._action(running[0], action, body, content_type)

    async def vm_openapi(self, name: str) -> tuple[str, bytes]:
        """(content type, document) of the OpenAPI document the VM's plugin declares."""
        vm = await self.store.get_vm(validate_name(name))
        reference = vm_manifest(vm).openapi
        if not reference:
            raise NotFound(f"plugin {vm.plugin!r} declares no OpenAPI document")
        if reference.startswith(("http://", "https://")):
            body = await fetch_bytes(
                reference,
                max_bytes=MAX_OPENAPI_BYTES,
                timeout=self.config.plugins_download_timeout,
            )
            return _guess_type(reference, body), body
        agent = agent_endpoint(vm, self.config)
        reply = await self.guest.request(agent, "GET", "/v1" + reference, timeout=30.0)
        if reply.status != 200:
            raise NotFound(
                f"the workload of {vm.name!r} answered {reply.status} for its OpenAPI "
                f"document at {reference}"
            )
        return reply.content_type or _guess_type(reference, reply.body), reply.body

    async def vm_recent_logs(self, name: str, limit: int = 200) -> list[dict[str, Any]]:
        """The workload's most recent stdout/stderr lines, oldest first."""
        vm = await self.store.get_vm(validate_name(name))
        reply = await self.guest.request(
            agent_endpoint(vm, self.config), "GET", f"/v1/logs?limit={limit}", timeout=10.0
        )
        if reply.status != 200:
            raise Unavailable(f"the guest agent of {vm.name!r} answered {reply.status} for logs")
        lines: list[dict[str, Any]] = json.loads(reply.body).get("lines", [])
        return lines

    async def vm_logs(self, name: str, backlog: int = 50) -> AsyncIterator[dict[str, Any]]:
        """The workload's stdout/stderr lines as the agent streams them (recent ones first)."""
        vm = await self.store.get_vm(validate_name(name))
        async for line in self.guest.stream_logs(agent_endpoint(vm, self.config), backlog):
            yield line

    async def _action(
        self, vm: VirtualMachine, action: str, body: bytes, content_type: str
    ) -> GuestReplyLike:
        actions = vm_manifest(vm).actions
        spec = actions.get(action)
        if spec is None:
            known = ", ".join(sorted(actions)) or "none"
            raise NotFound(
                f"plugin {vm.plugin!r} has no action {action!r} (its actions: {known})",
                field="action",
            )
        agent = agent_endpoint(vm, self.config)
        log.info("action %s on VM %s", action, vm.name, extra={"VM": vm.name})
        return await self.guest.action(
            agent,
            action,
            method=spec.method,
            body=body,
            content_type=content_type,
            timeout=spec.timeout_ms / 1000 + ACTION_GRACE,
        )


def networkless(vm: VirtualMachine) -> bool:
    """True for a VM of `network.mode: vsock`: no NIC, its agent reached over a local channel."""
    if not vm.manifest_json:
        return False
    network = json.loads(vm.manifest_json).get("network") or {}
    return isinstance(network, dict) and network.get("mode") == NetworkMode.VSOCK


def reachable_agent(vm: VirtualMachine, config: Config) -> AgentEndpoint | None:
    """The agent at the guest's address, or behind the relay socket of a network-less VM
    (volant.runtime.agentlink); None when the host knows neither (a dhcp guest's address)."""
    if vm.ip_address:
        return AgentEndpoint(vm.ip_address, vm.agent_secret)
    if networkless(vm):
        return AgentEndpoint("", vm.agent_secret, socket=config.vm_run_dir(vm.name) / AGENT_SOCKET)
    return None


def agent_endpoint(vm: VirtualMachine, config: Config) -> AgentEndpoint:
    """How to reach the agent of a VM whose agent can be reached now."""
    if vm.status not in (VMStatus.RUNNING, VMStatus.STARTING):
        raise InvalidState(
            f"VM {vm.name!r} is {vm.status}; its agent answers only while it runs",
            hint=f"`volar vms start {vm.name}`",
        )
    agent = reachable_agent(vm, config)
    if agent is None:
        raise InvalidState(f"VM {vm.name!r} has no address the host knows (dhcp mode)")
    return agent


def _guess_type(reference: str, body: bytes) -> str:
    if reference.endswith((".yaml", ".yml")) or not body.lstrip().startswith(b"{"):
        return "application/yaml"
    return "application/json"
