"""Logging setup: the journal under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str) -> str:
    """Route logging to the journal when stderr is connected to it; return where it goes."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if os.environ.get("JOURNAL_STREAM"):
        from systemd.journal import JournalHandler

        root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="volantd"))
        where = "journal"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        where = "stderr"
    for noisy in ("aiohttp.access", "pyroute2", "qemu.qmp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return where
