"""A VM's serial console: one attached client at a time, and the log the hypervisor keeps of it.

`ConsoleVerbs` is a base of `Engine`. Like `virsh console`, a second client is refused while one
is attached (two people typing into one shell helps nobody, and the hypervisor would not read the
second connection anyway); `force` takes the console over instead, the way `virsh console
--force` does, so that a session left behind by a dead terminal never locks the operator out.
The log lives under the state directory: the hypervisor writes it whether or not anyone is
attached, and it outlives volantd restarts and the VM itself until the VM is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path

from volant.config import Config
from volant.engine.ports import Store
from volant.model import (
    Conflict,
    InvalidArgument,
    InvalidState,
    LaunchSpec,
    VirtualMachine,
    VMStatus,
)
from volant.model.validate import validate_name
from volant.runtime.console import BLOCK, connect_serial, tail

log = logging.getLogger("volant.engine.engine")

ATTACHABLE = (VMStatus.RUNNING, VMStatus.STARTING)
# A VM that was just created may not have its serial socket yet.
CONNECT_WAIT = 3.0
MAX_LOG_LINES = 10_000
MAX_LOG_BYTES = 1024 * 1024


class ConsoleEnd(StrEnum):
    """Why an attached console ended."""

    DETACHED = "detached"  # the client left
    VM_STOPPED = "vm-stopped"  # the hypervisor closed the port: the VM stopped or crashed
    TAKEN_OVER = "taken-over"  # another client attached with force


class Console:
    """An attached serial console: what the guest writes to its ttyS0, and input for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ended: ConsoleEnd | None = None
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self, socket: Path) -> None:
        """Connect to the hypervisor's serial socket (waiting a little for it to appear)."""
        self._streams = await connect_serial(socket, wait=CONNECT_WAIT)
        if self.ended is not None:  # taken over while connecting
            self._streams[1].close()

    async def read(self) -> bytes:
        """The next bytes from the guest; b"" once the console has ended (see `ended`)."""
        if self._streams is None or self.ended is not None:
            return b""
        try:
            data = await self._streams[0].read(BLOCK)
        except OSError:
            data = b""
        if not data:
            self._end(ConsoleEnd.VM_STOPPED)
        return data

    async def write(self, data: bytes) -> None:
        """Send input to the guest; dropped once the console has ended."""
        if self._streams is None or self.ended is not None:
            return
        writer = self._streams[1]
        try:
            writer.write(data)
            await writer.drain()
        except OSError:
            self._end(ConsoleEnd.VM_STOPPED)

    async def close(self, why: ConsoleEnd = ConsoleEnd.DETACHED) -> None:
        """End the console (a pending read returns b""); the first reason given stays."""
        self._end(why)
        if self._streams is not None:
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()

    def _end(self, why: ConsoleEnd) -> None:
        if self.ended is None:
            self.ended = why
        if self._streams is not None:
            self._streams[1].close()


class ConsoleVerbs:
    """Attach to a VM's serial console and read its log; a base of Engine."""

    config: Config
    store: Store
    _consoles: dict[str, Console]

    def launch_spec(self, vm: VirtualMachine) -> LaunchSpec:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def attach_console(self, name: str, *, force: bool = False) -> AsyncIterator[Console]:
        """The VM's serial console, for the duration of the block.

        InvalidState unless the VM is running or starting; Conflict while another client is
        attached, unless force, which ends that client's console (TAKEN_OVER) instead.
        """
        vm = await self.store.get_vm(validate_name(name))
        if vm.status not in ATTACHABLE:
            raise InvalidState(
                f"VM {vm.name!r} is {vm.status}; its console exists only while it runs",
                hint=f"`volar vms start {vm.name}`; `volar vms console {vm.name} --log` "
                "shows what it printed",
            )
        current = self._consoles.get(vm.name)
        if current is not None and not force:
            raise Conflict(
                f"the console of VM {vm.name!r} is attached elsewhere",
                hint=f"`volar vms console {vm.name} --force` takes it over",
            )
        console = Console(vm.name)
        # Claimed before the first await below, so two clients never both pass the check.
        self._consoles[vm.name] = console
        try:
            if current is not None:
                log.info("console of VM %s taken over", vm.name, extra={"VM": vm.name})
                await current.close(ConsoleEnd.TAKEN_OVER)
            await console.connect(self.launch_spec(vm).serial_socket)
            log.info("console of VM %s attached", vm.name, extra={"VM": vm.name})
            yield console
        finally:
            await console.close()
            if self._consoles.get(vm.name) is console:
                del self._consoles[vm.name]
            log.info("console of VM %s ended: %s", vm.name, console.ended, extra={"VM": vm.name})

    async def console_log(self, name: str, lines: int = 100) -> bytes:
        """The last `lines` lines the VM wrote to its serial console (at most its last MiB),
        over all its boots; empty when it never wrote any. Readable whatever the VM's status."""
        vm = await self.store.get_vm(validate_name(name))
        if not 1 <= lines <= MAX_LOG_LINES:
            raise InvalidArgument(f"lines must be 1 to {MAX_LOG_LINES}", field="lines")
        path = self.config.vm_console_log(vm.name)
        return await asyncio.to_thread(tail, path, lines, MAX_LOG_BYTES)
