"""Build workers as the engine sees them: the runner seam, paths, and reading the worker's
progress file (volant.storage.worker writes it; see its docstring for the format)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from volant.model import ERROR_CLASSES, ErrorCode, InternalError, Unavailable, VolantError
from volant.model.builds import ImageFacts

WORKER = (sys.executable, "-m", "volant.storage.worker")
POLL = 0.2
OnProgress = Callable[[dict[str, Any]], Awaitable[None]]


class BuildRunner(Protocol):
    """Runs build workers (volant.host.builds): transient services, or child processes."""

    kind: str

    async def start(
        self, build_id: str, argv: Sequence[str], *, log_path: Path, writable: Sequence[Path]
    ) -> None: ...

    async def wait(self, build_id: str) -> None:
        """Return once every process of the build has ended."""
        ...

    async def stop(self, build_id: str) -> None:
        """Ask the worker to stop (it cleans up), kill it after a grace period; wait for it."""
        ...

    async def scan(self) -> set[str]:
        """Ids of the builds with a live worker, whoever started them."""
        ...

    async def close(self) -> None: ...


class NoBuildRunner:
    """Stands in where the daemon wired no runner (engine tests): every build is refused."""

    kind = "none"

    async def start(
        self, build_id: str, argv: Sequence[str], *, log_path: Path, writable: Sequence[Path]
    ) -> None:
        raise Unavailable("this volantd cannot run plugin builds (no build runner)")

    async def wait(self, build_id: str) -> None:
        return None

    async def stop(self, build_id: str) -> None:
        return None

    async def scan(self) -> set[str]:
        return set()

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class BuildPaths:
    """Where builds work: the shared image cache, and one directory per build."""

    cache_dir: Path
    builds_root: Path
    authfile: Path | None = None
    cert_dir: Path | None = None

    def work_dir(self, build_id: str) -> Path:
        return self.builds_root / build_id


async def follow_worker(
    runner: BuildRunner, build_id: str, progress: Path, on_progress: OnProgress
) -> ImageFacts:
    """Hand the worker's progress lines to on_progress until it ends; what it reported."""
    ended = asyncio.ensure_future(runner.wait(build_id))
    offset, final = 0, None
    try:
        while final is None:
            done = ended.done()
            lines, offset = await asyncio.to_thread(_read_lines, progress, offset)
            for record in lines:
                if record.get("type") == "progress":
                    await on_progress(record)
                elif record.get("type") in ("done", "error"):
                    final = record
            if final is None and done:
                break
            if final is None:
                await asyncio.wait({ended}, timeout=POLL)
    finally:
        ended.cancel()
    if final is None:
        said = await asyncio.to_thread(_last_line, progress.with_name("worker.log"))
        raise InternalError(
            "the build worker ended without a result" + (f": {said}" if said else " (killed?)"),
            hint="volantd's journal has the build's log lines",
        )
    if final["type"] == "error":
        raise _error_of(final)
    try:
        return ImageFacts.from_dict(final)
    except (KeyError, TypeError, ValueError) as exc:
        raise InternalError(f"the build worker's report is malformed: {exc}") from exc


def _last_line(path: Path) -> str:
    """The worker's last words on stderr (a traceback's last line says most), or ""."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def _error_of(record: dict[str, Any]) -> VolantError:
    """The worker's error record as the error it was (its code, message, hint and field)."""
    message = str(record.get("message", "the build failed"))
    hint, field = str(record.get("hint", "")), str(record.get("field", ""))
    if record.get("code") == "Cancelled":
        return InternalError("the build worker was stopped from outside volantd")
    try:
        cls = ERROR_CLASSES[ErrorCode(str(record.get("code")))]
    except (ValueError, KeyError):
        cls = InternalError
    return cls(message, hint=hint, field=field)


def _read_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of path after offset, and the offset after the last of them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records, offset + end
