"""Deterministic fault injection: named step boundaries of every multi-step verb.

A verb calls `faults.at("step")` between two host changes. Normally that does nothing. When
volantd runs with `VOLANT_FAULT_FILE=<path>` in its environment (a test-only switch) and that
file holds `<verb>:<step>`, the boundary deletes the file and volantd SIGKILLs itself there,
so a test can stop the daemon at exactly that point and check what the next start repairs.
The file is consumed first, so the restarted daemon does not kill itself again.

The verb is the outermost one under way (a restart's inner stop and start steps are
`restart:<step>`), carried in a context variable so background tasks inherit it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "VOLANT_FAULT_FILE"

_LAUNCH = ("starting", "tap-created", "disk-ready", "launched", "ready", "published", "running")
_STOP = ("stopping", "ended", "stopped")
# Every boundary of every verb, in the order a verb passes them. The fault-injection walk
# (tests/system/test_faults.py) arms each one; a unit test checks the verbs pass exactly these.
STEPS: dict[str, tuple[str, ...]] = {
    "create": ("recorded", *_LAUNCH),
    "start": _LAUNCH,
    "stop": _STOP,
    "restart": (*_STOP, *_LAUNCH),
    "delete": ("ended", "lease-released", "files-removed", "deleted"),
    "plugin-install": ("verified", "artifacts-cached"),
    "plugin-remove": ("removed",),
    # The install steps are the plugin-install ones, passed inside the build.
    "plugin-build": ("dir-made", "launched", "built", "verified", "artifacts-cached", "installed"),
    "volume-create": ("file-made", "recorded"),
    "volume-resize": ("grown", "fs-resized", "resized"),
    "volume-delete": ("forgotten", "removed"),
}

_verb: contextvars.ContextVar[str] = contextvars.ContextVar("volant_verb", default="")


class Faults:
    """The step boundaries of this daemon; armed only through the test-only switch."""

    def __init__(self, armed_file: Path | None = None) -> None:
        self.armed_file = armed_file
        self.passed: list[str] = []
        """Boundaries passed so far, as "verb:step" (kept only when a file is configured)."""

    @classmethod
    def from_environment(cls) -> Faults:
        path = os.environ.get(ENV)
        if path:
            log.warning("fault injection is on (%s=%s): a test may kill this daemon", ENV, path)
        return cls(Path(path) if path else None)

    @contextlib.asynccontextmanager
    async def verb(self, name: str) -> AsyncIterator[None]:
        """Name the verb under way, unless an outer verb already did."""
        if _verb.get():
            yield
            return
        token = _verb.set(name)
        try:
            yield
        finally:
            _verb.reset(token)

    def at(self, step: str) -> None:
        """A boundary: SIGKILL this process when the test-only switch is armed for it."""
        if self.armed_file is None:
            return
        point = f"{_verb.get()}:{step}"
        self.passed.append(point)
        try:
            # A few bytes from a file the test wrote; only ever read with the switch on.
            armed = self.armed_file.read_text().strip()
        except OSError:
            return
        if armed != point:
            return
        self.armed_file.unlink(missing_ok=True)
        log.critical("fault injection: SIGKILL at %s", point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
