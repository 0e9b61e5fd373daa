"""What `volar vms create|start|restart` shows while a VM boots.

On a terminal, a status line on stderr follows the VM's events ("web: starting
(192.168.127.2)…") while the request is in flight; in the end one line on stdout says how it
went ("VM web is running at 192.168.127.2 (4.1 s)"), which is all a script sees. The event
stream is opened before the request is sent, so no event of it is missed; when it cannot be
opened, volar just waits for the answer.

A plugin with a health check keeps its VM `starting` after the daemon answered, until the
workload is healthy: with `wait`, volar follows the events (or, without them, polls) until
the VM is running or has failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from volant.client import VolantClient
from volant.client.watch import VMWatch, watch_vm

SETTLED = frozenset({"running", "stopped", "crashed", "error"})
ENDINGS = frozenset({"VM_RUNNING", "VM_STOPPED", "VM_CRASHED", "VM_ERROR", "VM_DELETED"})
POLL = 0.5


class StatusLine:
    """A spinner and one line of text on stderr, when stderr is a terminal; else nothing.

    rich hides the cursor while it draws and erases the line when the block ends, however it
    ends (Ctrl-C included). Each new text is drawn at once, so even a step that lasts less
    than a spinner frame is seen.
    """

    def __init__(self, enabled: bool) -> None:
        self._console = Console(stderr=True)
        self.enabled = enabled and self._console.is_terminal and not self._console.is_dumb_terminal
        self._spinner = Spinner("dots", style="status.spinner")
        self._live: Live | None = None

    def __enter__(self) -> StatusLine:
        if self.enabled:
            self._live = Live(self._spinner, console=self._console, transient=True)
            self._live.start()
        return self

    def update(self, text: str) -> None:
        if self._live is not None:
            self._spinner.update(text=Text(text))  # a Text: names are never rich markup
            self._live.refresh()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


@dataclass(frozen=True)
class Boot:
    """What is being done to VM name ("creating", "starting", "restarting"), and whether to
    wait past the daemon's answer until the VM settles."""

    name: str
    doing: str
    wait: bool


@dataclass
class _Seen:
    """The events so far: the last one (for the line), and how the latest start ended (an
    ending counts only after a VM_STARTING: a restart's VM_STOPPED comes first)."""

    line: StatusLine
    name: str
    started: bool = False
    outcome: dict[str, Any] | None = None

    def see(self, event: dict[str, Any]) -> None:
        if event.get("type") == "VM_STARTING":
            self.started, self.outcome = True, None
        elif event.get("type") in ENDINGS and self.started:
            self.outcome = event
        payload = event.get("payload") or {}
        self.line.update(progress_text(self.name, payload.get("status"), payload.get("ip_address")))


def progress_text(name: str, status: Any, ip: Any, then: str = "") -> str:
    """The status line for VM name in status (at ip), and what comes next."""
    return f"{name}: {status or 'busy'}" + (f" ({ip})" if ip else "") + then + "…"


Request = Callable[[], Awaitable[dict[str, Any]]]


async def boot(
    client: VolantClient, job: Boot, request: Request, *, show: bool
) -> tuple[dict[str, Any], float]:
    """Send request() while following the VM's events, with a status line when show is set
    and stderr is a terminal; (the VM as it ended up, seconds taken).

    ApiError when the request fails; the VM as the daemon left it when it failed to boot.
    """
    started = time.monotonic()
    try:
        with StatusLine(show) as line:
            vm = await _boot(client, job, request, line)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels, then raises KeyboardInterrupt
        interrupted(job)
        raise
    return vm, time.monotonic() - started


async def _boot(
    client: VolantClient, job: Boot, request: Request, line: StatusLine
) -> dict[str, Any]:
    line.update(f"{job.doing} {job.name}…")
    if not (job.wait or line.enabled):
        return await request()
    async with watch_vm(client, job.name) as watch:
        seen = _Seen(line, job.name)
        vm = await _answer(request(), watch, seen)
        if job.wait and vm.get("status") not in SETTLED:
            then = ", waiting for its workload to be healthy"
            line.update(progress_text(job.name, vm.get("status"), vm.get("ip_address"), then))
            vm = await _settle(client, watch, seen, vm)
    return vm


async def _answer(
    request: Awaitable[dict[str, Any]], watch: VMWatch, seen: _Seen
) -> dict[str, Any]:
    """request's answer; meanwhile every event goes to seen."""
    answer = asyncio.ensure_future(request)
    event = asyncio.ensure_future(watch.next())
    try:
        while not answer.done():
            await asyncio.wait({answer, event}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                continue
            if (found := event.result()) is None:
                break  # no more events: the answer alone tells
            seen.see(found)
            event = asyncio.ensure_future(watch.next())
        return await answer
    finally:
        for task in (answer, event):
            task.cancel()


async def _settle(
    client: VolantClient, watch: VMWatch, seen: _Seen, vm: dict[str, Any]
) -> dict[str, Any]:
    """VM as it is once its start has ended: by its events, else by asking every POLL s."""
    while seen.outcome is None and (event := await watch.next()) is not None:
        seen.see(event)
    if seen.outcome is not None and seen.outcome.get("type") == "VM_DELETED":
        payload = seen.outcome.get("payload") or {}
        return vm | {"status": "deleted", "status_reason": payload.get("reason", "")}
    while seen.outcome is None and vm.get("status") not in SETTLED:
        await asyncio.sleep(POLL)
        vm = await client.get_vm(seen.name)
    return await client.get_vm(seen.name) if seen.outcome is not None else vm


def final_line(vm: dict[str, Any], seconds: float) -> str:
    """`VM web is running at 192.168.127.2 (4.1 s)`: how the boot ended, for people and
    scripts."""
    reason = f" ({vm['status_reason']})" if vm.get("status_reason") else ""
    where = f" at {vm['ip_address']}" if vm.get("ip_address") else ""
    return f"VM {vm.get('name')} is {vm.get('status')}{reason}{where} ({seconds:.1f} s)"


def interrupted(job: Boot) -> None:
    """Said when Ctrl-C ends the wait: the daemon carries on regardless."""
    click.echo(
        f"volar: interrupted; volantd goes on {job.doing} {job.name} "
        f"(`volar vms get {job.name}` shows how far it got)",
        err=True,
    )
