"""The build worker: `python -m volant.storage.worker`, one image import in its own process.

volantd starts it in a transient unit of its own (or, without systemd, as a child process),
because unpacking an image as root needs privileges volantd.service does not keep. It reports
to a progress file as JSON lines, one object per line, so the daemon can follow it whichever
way it was started and read the outcome even after the worker is gone:

    {"type": "progress", "step": "pull", "fraction": 0.1, "detail": "…"}
    {"type": "done", "image": …, "digest": …, "argv": […], …}        (last line on success)
    {"type": "error", "code": "InvalidArgument", "message": …, "hint": …, "field": …}

The exit status is 0 after "done", 1 after "error"; a worker killed by a signal writes neither,
which the daemon reports as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from volant.model import VolantError
from volant.storage.cache import ImageCache
from volant.storage.pull import pull
from volant.storage.reference import parse_image_ref
from volant.storage.rootfs import build_erofs, cached_rootfs
from volant.storage.skopeo import Access

log = logging.getLogger("volant.storage.worker")

# Rough shares of a build's time, for a progress bar that moves at the step boundaries.
STEPS = {"pull": 0.02, "build": 0.5, "place": 0.95}


class Reporter:
    """Appends progress lines to the progress file, flushed at once (the daemon tails it)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, sort_keys=True) + "\n")
        self.out.flush()

    def step(self, step: str, detail: str = "") -> None:
        self.write({"type": "progress", "step": step, "fraction": STEPS[step], "detail": detail})


async def build(args: argparse.Namespace, report: Reporter) -> dict[str, Any]:
    """Pull and build; the "done" record's fields (volant.model.builds.ImageFacts)."""
    ref = parse_image_ref(args.image)
    access = Access(authfile=args.authfile, cert_dir=args.cert_dir)
    cache = ImageCache(args.cache)
    report.step("pull", str(ref))
    image = await pull(ref, cache, access)
    fetched = f"{image.blobs_fetched} layers fetched, {image.blobs_reused} from the cache"
    report.step("build", f"{image.digest}: {fetched}")
    rootfs = await build_erofs(image, cache, args.out, args.work)
    report.step("place", rootfs.path)
    work = image.workload
    return {
        "image": args.image,
        "digest": image.digest,
        "entrypoint": list(work.entrypoint),
        "cmd": list(work.cmd),
        "env": work.env,
        "workdir": work.workdir,
        "user": work.user,
        "exposed_ports": list(work.exposed_ports),
        # The cache's copy, which outlives this build's directory (out is a link to it).
        "rootfs_path": str(cached_rootfs(cache, image.digest)),
        "rootfs_checksum": rootfs.sha256,
        "rootfs_size": rootfs.size,
        "cache_hit": image.cache_hit and rootfs.reused,
    }


def _error_record(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, VolantError):
        return {
            "type": "error",
            "code": exc.code.value,
            "message": exc.message,
            "hint": exc.hint or "",
            "field": exc.field or "",
        }
    return {"type": "error", "code": "Internal", "message": f"{type(exc).__name__}: {exc}"}


async def _main(args: argparse.Namespace, report: Reporter) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM (a cancel, `systemctl stop`) cancels the import, whose cleanup then runs: no
    # partial output, no unpacked tree, no tool left writing.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        facts = await build(args, report)
    except asyncio.CancelledError:
        report.write({"type": "error", "code": "Cancelled", "message": "the build was cancelled"})
        return 1
    except Exception as exc:
        if not isinstance(exc, VolantError):
            log.exception("build failed")
        report.write(_error_record(exc))
        return 1
    report.write({"type": "done", **facts})
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="volant-build-worker", description=__doc__)
    parser.add_argument("--image", required=True, help="docker://…, oci:…, oci-archive:…")
    parser.add_argument("--cache", type=Path, required=True, help="the shared image cache")
    parser.add_argument("--out", type=Path, required=True, help="where the erofs image goes")
    parser.add_argument("--work", type=Path, required=True, help="room for the unpacked tree")
    parser.add_argument("--progress", type=Path, required=True, help="JSON lines go here")
    parser.add_argument("--authfile", type=Path, default=None)
    parser.add_argument("--cert-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    os.umask(0o022)
    with args.progress.open("a", encoding="utf-8") as out:
        code = asyncio.run(_main(args, Reporter(out)))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
