"""Running skopeo, umoci and mkfs.erofs: off the event loop, killed with their children on
cancellation, and their failures reduced to one readable line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from volant.model import Unavailable
from volant.storage.errors import NoSpace

log = logging.getLogger(__name__)

PACKAGES = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "mkfs.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs",
}
# skopeo logs through logrus: time="…" level=fatal msg="…"; umoci marks its message with a
# cross (U+2A2F).
_LOGRUS_MSG = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')
_NO_SPACE = ("no space left on device", "disk quota exceeded", "file too large")


@dataclass(frozen=True)
class Finished:
    """A tool run: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def message(self) -> str:
        """The tool's own error message, without log decoration."""
        found = _LOGRUS_MSG.findall(self.stderr)
        if found:
            return str(found[-1]).replace('\\"', '"')
        lines = [line.strip(" \u2a2f\t") for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


async def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Finished:
    """Run argv to completion and return what it did; never raises for a non-zero exit.

    The tool runs in its own session: cancelling the caller kills the whole group (skopeo and
    umoci start helpers) and waits for it, so no writer outlives a cancelled build.
    """
    tool = argv[0]
    full_env = dict(os.environ) | dict(env or {})
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        package = PACKAGES.get(tool, tool)
        raise Unavailable(
            f"{tool} is not installed; Volant needs it here", hint=f"apt install {package}"
        ) from exc
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    done = Finished(
        proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
    )
    if not done.ok:
        log.debug("%s exited %d: %s", tool, done.returncode, done.stderr.strip())
    return done


def raise_if_no_space(done: Finished, what: str) -> None:
    """A full file system is the operator's to fix, whichever tool hit it: say so plainly."""
    if any(marker in done.stderr.lower() for marker in _NO_SPACE):
        raise NoSpace(
            f"{what}: no space left on the device ({done.message})",
            hint="free some space in the image cache or output directory, then build again",
        )
