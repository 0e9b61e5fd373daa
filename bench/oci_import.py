"""Print OCI import time (pull + erofs build) for the nginx example image, cold and cached.

Usage: .venv/bin/python -m bench.oci_import [--runs 3] [--staging DIR]

The image is examples/images/nginx (Debian's Essential packages plus nginx, built once with
mmdebstrap and cached under .cache/example-images/). It is served by Debian's docker-registry
over TLS on 127.0.0.1 inside a network namespace this script creates and deletes, and pulled
with docker:// from there. Cold: an empty blob cache each run. Cached: the same cache again,
so only the manifest is asked for and the kept erofs build is checked and linked. Rebuilt:
the cached blobs, but the kept build deleted first, so the rootfs is unpacked and built again.
Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.example_image import nginx_layout
from tests.integration.netns_thread import run_in_netns
from tests.integration.registry import HOST, Registry, serving_registry
from volant.storage import Access, ImageCache, build_erofs, parse_image_ref, pull

REPO = "volant/nginx:bench"


@dataclass(frozen=True)
class Run:
    pull: float
    build: float
    cache_hit: bool
    reused: bool
    compressed: int  # bytes of layer blobs
    erofs: int  # bytes of the built rootfs


async def one_import(registry: Registry, cache: Path, work: Path, *, rebuild: bool = False) -> Run:
    """Pull into cache and build the rootfs under work; the rootfs is deleted afterwards."""
    if rebuild:
        shutil.rmtree(cache / "rootfs")
    access = Access(authfile=registry.authfile, cert_dir=registry.cert_dir)
    ref = parse_image_ref(f"docker://{HOST}/{REPO}")
    start = time.monotonic()
    image = await run_in_netns(registry.ns, lambda: pull(ref, ImageCache(cache), access))
    pulled = time.monotonic()
    out = cache / "out" / "nginx.erofs"  # beside the cache, so a kept build is linked
    rootfs = await build_erofs(image, ImageCache(cache), out, work)
    built = time.monotonic()
    out.unlink()
    compressed = sum(layer.size for layer in image.layers)
    return Run(
        pulled - start, built - pulled, image.cache_hit, rootfs.reused, compressed, rootfs.size
    )


def report(label: str, runs: list[Run]) -> None:
    totals = [r.pull + r.build for r in runs]
    hits = sum(1 for r in runs if r.cache_hit)
    reused = sum(1 for r in runs if r.reused)
    print(
        f"{label:7} total median {statistics.median(totals):6.2f}s  "
        f"pull {statistics.median(r.pull for r in runs):6.2f}s  "
        f"build {statistics.median(r.build for r in runs):6.2f}s  "
        f"pull hits {hits}/{len(runs)} builds reused {reused}/{len(runs)}  "
        f"totals: {' '.join(f'{t:.2f}' for t in totals)}",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--staging",
        type=Path,
        help="where images are unpacked (default: beside the cache, on disk); try /dev/shm",
    )
    args = parser.parse_args()
    layout = nginx_layout()
    with tempfile.TemporaryDirectory(prefix="volant-bench-oci-") as tmp:
        root = Path(tmp)
        (root / "registry").mkdir()
        with serving_registry(root / "registry") as registry:
            registry.push(layout, "latest", REPO)
            cold: list[Run] = []
            cached: list[Run] = []
            rebuilt: list[Run] = []
            # Interleaved, so a noisy neighbour slows all kinds alike; the first cold run's
            # cache is the one the others reuse.
            warm = root / "cache-0"
            work = args.staging / "volant-bench-oci" if args.staging else root / "work"
            try:
                for run in range(args.runs):
                    cold.append(await one_import(registry, root / f"cache-{run}", work))
                    cached.append(await one_import(registry, warm, work))
                    rebuilt.append(await one_import(registry, warm, work, rebuild=True))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    report("cold", cold)
    report("cached", cached)
    report("rebuilt", rebuilt)
    print(
        f"image: {cold[0].compressed / 1e6:.1f} MB of compressed layers, "
        f"erofs rootfs {cold[0].erofs / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    asyncio.run(main())
