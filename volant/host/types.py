"""Types the supervisors share with their callers (structurally equal to volant.engine.ports)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

ExitCallback = Callable[[str, int, int | None, bool], Awaitable[None]]
"""Called with (vm name, pid, exit status or None when unknown, stopped) when a hypervisor ends;
stopped is True when systemd ended its scope on request (an operator's stop, host shutdown)."""
