"""ExecService on a real SQLite store and the real agent on loopback (commands run on this
host): the output cap, the VM_EXEC event, the per-VM limit, a VM that does not run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from volant_agent.app import Agent, make_handler
from volant_agent.http import MAX_HEAD, connection_handler
from volant_agent.logs import LogBuffer
from volant_agent.manifest import Workload
from volant_agent.workload import Supervisor

from volant.config import load_config
from volant.engine.exec import ExecService
from volant.model import Conflict, EventType, InvalidState, VMSpec, VMStatus
from volant.model.execs import ExecSpec
from volant.runtime.guest import GuestAgent
from volant.store import SqliteStore

pytestmark = pytest.mark.unit

SECRET = "service-test-secret"


@dataclass
class World:
    service: ExecService
    store: SqliteStore
    events: list[tuple[EventType, str, dict[str, Any]]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    """VM `web` running at 127.0.0.1 (the pool's one address), its agent on a free port."""
    env = {"HOME": str(tmp), "VOLANT_EXEC_MAX_PER_VM": "1", "VOLANT_EXEC_MAX_OUTPUT_KB": "1"}
    config = load_config([], env=env)
    store = await SqliteStore.open(tmp / "state.db")
    await store.ensure_pool(IPv4Network("127.0.0.0/30"), {IPv4Address("127.0.0.2")})
    await store.add_plugin("{}", "app", "1.0", "app", "sha256:" + "0" * 64)
    spec = VMSpec(name="web", plugin="app", cpu_cores=1, memory_mb=256)
    vm = await store.create_vm(
        spec, runtime="qemu", unit="", mac_for=lambda *_: "02:00:00:00:00:01", agent_secret=SECRET
    )
    assert vm.ip_address == "127.0.0.1"
    await store.update_vm("web", status=VMStatus.RUNNING)
    sup = Supervisor(Workload(entrypoint=("/bin/true",)), LogBuffer())
    agent = Agent(None, "test", LogBuffer(), sup, lambda: None, secret=SECRET)
    agent.workload_prepared = True
    port = free_port()
    server = await asyncio.start_server(
        connection_handler(make_handler(agent)), "127.0.0.1", port, limit=MAX_HEAD
    )
    events: list[tuple[EventType, str, dict[str, Any]]] = []

    async def emit(event_type: EventType, vm: str, payload: dict[str, Any]) -> None:
        events.append((event_type, vm, payload))

    try:
        async with GuestAgent(port=port) as guest:
            yield World(ExecService(config, store, guest, emit), store, events)
    finally:
        server.close()
        await server.wait_closed()
        await store.close()


def test_output_is_capped_and_every_exec_is_an_event(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            spec = ExecSpec(("sh", "-c", "head -c 5000 /dev/zero; echo e >&2; exit 3"))
            out = await w.service.run("web", spec, "uid 0 (root)")
            assert (out.end.exit_code, out.truncated) == (3, True)
            assert (len(out.stdout), out.stderr) == (1024, b"e\n")
            small = await w.service.run("web", ExecSpec(("cat",)), "api-key", stdin=b"hi")
            assert (small.stdout, small.truncated) == (b"hi", False)
            assert w.events == [
                (EventType.VM_EXEC, "web", {"caller": "uid 0 (root)", "tty": False,
                                            "argv": list(spec.argv), "exit_code": 3}),
                (EventType.VM_EXEC, "web", {"caller": "api-key", "tty": False,
                                            "argv": ["cat"], "exit_code": 0}),
            ]  # fmt: skip

    asyncio.run(go())


def test_the_limit_per_vm_and_a_vm_that_does_not_run(tmp_path: Path) -> None:
    async def go() -> None:
        async with world(tmp_path) as w:
            async with w.service.session("web", ExecSpec(("sleep", "30")), "t") as link:
                assert w.service.running("web") == 1
                with pytest.raises(Conflict, match=r"already runs 1 commands \(exec.max_per_vm\)"):
                    await w.service.run("web", ExecSpec(("id",)), "t")
                await link.close()  # leaving early: the agent kills the sleep
            assert w.service.running("web") == 0
            assert w.events[-1][2]["exit_code"] is None
            assert "caller left" in w.events[-1][2]["error"]
            await w.store.update_vm("web", status=VMStatus.STOPPED)
            with pytest.raises(InvalidState, match="is stopped"):
                await w.service.run("web", ExecSpec(("id",)), "t")

    asyncio.run(go())
