"""Commands run in a VM's workload (`volar vms exec`): the limits, the agent link, the event.

The guest's agent runs the command chrooted into the workload's root as its user
(agent/volant_agent/exec.py); this service checks the request, holds one of the VM's
`exec.max_per_vm` slots while it runs, and records every exec as a VM_EXEC event: who asked,
the argv and how it ended. A command is root's business in the guest, so the front-ends let
only managers of VMs (polkit manage-vms, or the API key over TCP) get here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

from volant.config import Config
from volant.engine.agentports import ExecLink, Guest
from volant.engine.events import EventBus
from volant.engine.guest import agent_endpoint
from volant.engine.ports import Store
from volant.model import Conflict, EventType, InvalidArgument, Unavailable
from volant.model.execs import MAX_ARGV, MAX_TIMEOUT, ExecOutput, ExecSpec
from volant.model.validate import validate_name

log = logging.getLogger("volant.engine.engine")

EVENT_ARG = 256
EVENT_ARGS = 64
Emit = Callable[[EventType, str, dict[str, Any]], Awaitable[None]]


def check_spec(spec: ExecSpec) -> ExecSpec:
    """spec, or InvalidArgument naming the field that is wrong."""
    if not spec.argv or not spec.argv[0]:
        raise InvalidArgument("argv must name a command", field="argv", hint="`-- ls -l /`")
    if len(spec.argv) > MAX_ARGV or any("\0" in a for a in spec.argv):
        raise InvalidArgument(f"argv must be at most {MAX_ARGV} strings without NUL", field="argv")
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key + value:
            raise InvalidArgument(f"env name {key!r} is not a variable name", field="env")
    if spec.workdir and not spec.workdir.startswith("/"):
        raise InvalidArgument("workdir must be an absolute path", field="workdir")
    if not 0 <= spec.timeout <= MAX_TIMEOUT:
        raise InvalidArgument(f"timeout must be 0 (none) to {MAX_TIMEOUT} seconds", field="timeout")
    if not (0 < spec.rows < 65536 and 0 < spec.cols < 65536):
        raise InvalidArgument("rows and cols must be 1 to 65535", field="rows")
    return spec


def exec_service(config: Config, store: Store, guest: Guest, bus: EventBus) -> ExecService:
    """The engine's exec service, its events in the log and on the bus."""

    async def emit(event_type: EventType, vm: str, payload: dict[str, Any]) -> None:
        bus.publish(await store.append_event(event_type, vm, payload))

    return ExecService(config, store, guest, emit)


class ExecService:
    """Start commands in running VMs, at most `exec.max_per_vm` at once in each."""

    def __init__(self, config: Config, store: Store, guest: Guest, emit: Emit) -> None:
        self.config = config
        self.store = store
        self.guest = guest
        self._emit = emit
        self._running: dict[str, int] = {}

    def running(self, name: str) -> int:
        """Commands running now in VM name."""
        return self._running.get(name, 0)

    async def ready(self, name: str) -> None:
        """NotFound or InvalidState now, before a caller is asked for its command."""
        agent_endpoint(await self.store.get_vm(validate_name(name)), self.config)

    @contextlib.asynccontextmanager
    async def session(self, name: str, spec: ExecSpec, caller: str) -> AsyncIterator[ExecLink]:
        """The command, running for the block; hung up (and so killed) when the block ends.

        InvalidState unless the VM runs; Conflict when it runs `exec.max_per_vm` commands
        already; InvalidArgument for a bad spec or a user or workdir the image lacks.
        """
        check_spec(spec)
        vm = await self.store.get_vm(validate_name(name))
        agent = agent_endpoint(vm, self.config)
        limit = self.config.exec_max_per_vm
        if self.running(vm.name) >= limit:
            raise Conflict(
                f"VM {vm.name!r} already runs {limit} commands (exec.max_per_vm)",
                hint="wait for one to end, or raise exec.max_per_vm",
            )
        # Claimed before the first await below, so two callers never both pass the check.
        self._running[vm.name] = self.running(vm.name) + 1
        link: ExecLink | None = None
        error = ""
        try:
            link = await self.guest.open_exec(agent, spec.to_agent())
            log.info("exec %s in VM %s by %s", spec.argv[0], vm.name, caller, extra={"VM": vm.name})
            yield link
        except Exception as exc:
            error = str(exc)
            raise
        finally:
            self._running[vm.name] -= 1
            if not self._running[vm.name]:
                del self._running[vm.name]
            if link is not None:
                await link.close()
            await self._record(vm.name, spec, caller, link, error)

    async def _record(
        self, name: str, spec: ExecSpec, caller: str, link: ExecLink | None, error: str
    ) -> None:
        end = link.end if link is not None else None
        payload: dict[str, Any] = {
            "caller": caller,
            "argv": brief(spec.argv),
            "tty": spec.tty,
            "exit_code": end.exit_code if end is not None else None,
        }
        if end is not None and end.timed_out:
            payload["timed_out"] = True
        if end is None:
            payload["error"] = error or "the command's end was not seen (the caller left)"
        elif end.error:
            payload["error"] = end.error
        try:
            await self._emit(EventType.VM_EXEC, name, payload)
        except Exception:
            log.exception("could not record an exec in VM %s", name)

    async def run(
        self, name: str, spec: ExecSpec, caller: str, *, stdin: bytes = b""
    ) -> ExecOutput:
        """Run the command to its end with stdin; its output kept up to exec.max_output_kb
        of each stream (truncated says whether more came)."""
        cap = self.config.exec_max_output_kb * 1024
        out = {"stdout": bytearray(), "stderr": bytearray()}
        truncated = False
        async with self.session(name, spec, caller) as link:
            await link.send_stdin(stdin)
            await link.close_stdin()
            while (chunk := await link.receive()) is not None:
                kept = out[chunk[0]]
                room = cap - len(kept)
                truncated = truncated or len(chunk[1]) > room
                kept += chunk[1][: max(room, 0)]
            end = link.end
        if end is None:
            raise_gone(name)
        return ExecOutput(end, bytes(out["stdout"]), bytes(out["stderr"]), truncated)


def brief(argv: tuple[str, ...]) -> list[str]:
    """argv as the event log keeps it: a script passed inline may be long, and every exec is
    logged, so each argument is cut at EVENT_ARG chars and the list at EVENT_ARGS."""
    kept = [a if len(a) <= EVENT_ARG else a[:EVENT_ARG] + "…" for a in argv[:EVENT_ARGS]]
    return kept + ([f"… {len(argv) - EVENT_ARGS} more"] if len(argv) > EVENT_ARGS else [])


def raise_gone(name: str) -> NoReturn:
    """The guest went away before the command ended (the VM stopped or its agent died)."""
    raise Unavailable(
        f"VM {name!r} went away before the command ended",
        hint=f"`volar vms get {name}` and `volar events --vm {name}` say what happened",
    )
