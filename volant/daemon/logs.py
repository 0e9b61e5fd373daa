"""Logging setup: the journal under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

from volant.host import scope_name


class VMFields(logging.Filter):
    """Journal fields for records about a VM (logged with extra={"VM": name}).

    JournalHandler sends every record attribute as a field, so VM=<name> needs nothing here;
    this adds UNIT=<its scope> when the caller did not, and OBJECT_SYSTEMD_UNIT= so that
    `journalctl -u volant-vm-<name>.scope` shows volantd's lines about the VM too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(record, "VM", None)
        if name:
            unit = getattr(record, "UNIT", None) or scope_name(str(name))
            record.UNIT = unit
            record.OBJECT_SYSTEMD_UNIT = unit
        return True


def setup_logging(level: str) -> str:
    """Route logging to the journal when stderr is connected to it; return where it goes."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if os.environ.get("JOURNAL_STREAM"):
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="volantd")
        handler.addFilter(VMFields())
        root.addHandler(handler)
        where = "journal"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        where = "stderr"
    # mcp logs every stateless request at INFO ("Terminating session: None").
    for noisy in ("aiohttp.access", "mcp", "pyroute2", "qemu.qmp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return where
