"""Cloud Hypervisor's own account of why it ended, read from its `--event-monitor` file.

CH writes each event as pretty-printed JSON followed by a blank line (reference A.3): `{timestamp,
source, event, properties}`. The file is truncated when CH starts and holds every event since, so
it can be read after CH has exited, by this volantd or by the next one after a restart.

A guest power-off ends the stream with vm shutdown, vm deleted, vmm shutdown, and CH exits 0
(A.4). CH does not say who asked: SIGTERM to CH, or `vmm.shutdown` on its API from anyone but
volantd, ends it the same way, so a clean end that volantd did not ask for is read as the
guest's power-off. A guest reboot or panic does not end CH at all (it reboots the VM in place),
and a SIGKILL or a crash ends the stream without a shutdown.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from volant.model import EndCause, HypervisorEnd

log = logging.getLogger(__name__)

EVENTS_FILE = "events.json"
_SHUTDOWN = frozenset({("vm", "shutdown"), ("vm", "deleted"), ("vmm", "shutdown")})


def parse_events(text: str) -> list[dict[str, Any]]:
    """The complete events in text, in order; a partly written last one is left out."""
    decoder = json.JSONDecoder()
    events: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return events
        try:
            event, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return events
        if isinstance(event, dict):
            events.append(event)


def events_end(events: list[dict[str, Any]]) -> HypervisorEnd:
    """GUEST_POWEROFF when the stream ends in a VM shutdown; UNKNOWN otherwise."""
    if not events:
        return HypervisorEnd()
    last = events[-1]
    source, name = str(last.get("source", "")), str(last.get("event", ""))
    if (source, name) in _SHUTDOWN:
        return HypervisorEnd(EndCause.GUEST_POWEROFF, f"{source} {name}")
    return HypervisorEnd(EndCause.UNKNOWN, f"last event {source} {name}")


def read_end(path: Path) -> HypervisorEnd:
    """The end CH's event file at path tells (blocking: run it off the event loop)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        log.info("cannot read Cloud Hypervisor events %s: %s", path, exc)
        return HypervisorEnd()
    return events_end(parse_events(text))
