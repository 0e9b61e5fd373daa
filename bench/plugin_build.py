"""Print `POST /api/v1/plugins/build` time for the nginx example image, cold and cached.

Usage: .venv/bin/python -m bench.plugin_build [--runs 3]

The whole verb, as an operator waits for it: a real volantd (process runner: the worker is its
child) pulls examples/images/nginx (49 MB of gzip layers, a 143 MB erofs; built once with
mmdebstrap and cached under .cache/example-images/) from Debian's docker-registry over TLS in a
network namespace, builds the erofs in its worker, and installs the plugin (which copies the
rootfs into the artifact cache). Cold: the image cache and the artifact cache emptied before
each run. Cached: the same image again under another plugin name, so nothing is fetched or
built (the artifact is cached already, too). bench.oci_import measures the library alone.
Needs root.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.daemon import Daemon, start_daemon, stop_daemon
from tests.integration.example_image import nginx_layout
from tests.integration.registry import HOST, serving_registry

REPO = "volant/nginx:bench"


def one_build(daemon: Daemon, name: str) -> tuple[float, dict[str, object]]:
    body = {"image": f"docker://{HOST}/{REPO}", "name": name}
    start = time.monotonic()
    build = daemon.call(lambda c: c.build_plugin(body))
    build_id = build["id"]
    while build["state"] == "running":
        time.sleep(0.05)
        build = daemon.call(lambda c: c.get_build(build_id))
    took = time.monotonic() - start
    if build["state"] != "succeeded":
        raise SystemExit(f"build failed: {build}")
    return took, build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    layout = nginx_layout()
    with tempfile.TemporaryDirectory(prefix="volant-bench-") as tmp:
        root = Path(tmp)
        (root / "registry").mkdir()
        with serving_registry(root / "registry") as registry:
            registry.push(layout, "latest", REPO)
            settings = {
                "images.authfile": str(registry.authfile),
                "images.cert_dir": str(registry.cert_dir),
                "api.listen": "",
            }
            daemon = start_daemon(registry.ns, root, settings, plugins=())
            try:
                state = root / "state"
                cold, cached = [], []
                for run in range(args.runs):
                    if run:  # the artifacts go with their plugins: a cold run copies again
                        for name in (f"cold{run - 1}", f"hit{run - 1}"):
                            daemon.call(lambda c, n=name: c.remove_plugin(n))
                    shutil.rmtree(state / "images", ignore_errors=True)
                    took, build = one_build(daemon, f"cold{run}")
                    assert not build["cache_hit"]
                    cold.append(took)
                    took, build = one_build(daemon, f"hit{run}")
                    assert build["cache_hit"]
                    cached.append(took)
                size = sum(p.stat().st_size for p in (state / "images" / "rootfs").glob("*.erofs"))
            finally:
                stop_daemon(daemon)
    for label, times in (("cold", cold), ("cached", cached)):
        print(
            f"plugin build {label:6} median {statistics.median(times):6.2f}s  "
            f"runs: {' '.join(f'{t:.2f}' for t in times)}",
            flush=True,
        )
    print(f"erofs {size / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
