"""The example image recipes (examples/images/*), each built once and cached under .cache/.

A recipe installs Debian packages with mmdebstrap, which takes a minute or more; its layout is
kept until the recipe's files change. The benches import the same layouts.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "images"
RECIPE = RECIPES / "nginx"
CACHE = ROOT / ".cache" / "example-images"


def example_layout(name: str) -> Path:
    """The OCI layout examples/images/<name>/build.sh makes (tag "latest")."""
    recipe = RECIPES / name
    digest = hashlib.sha256()
    for path in sorted(recipe.iterdir()):
        if path.suffix == ".md":
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    layout = CACHE / f"{name}-{digest.hexdigest()[:16]}"
    if layout.is_dir():
        return layout
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        built = Path(tmp) / "layout"
        proc = subprocess.run(
            [str(recipe / "build.sh"), str(built)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout}\n{proc.stderr}"
        for old in CACHE.glob(f"{name}-*"):
            shutil.rmtree(old)
        built.rename(layout)
    return layout


def nginx_layout() -> Path:
    """The nginx example's layout: two layers, a whiteout, www-data on port 8080."""
    return example_layout("nginx")


def redis_layout() -> Path:
    """The Redis example's layout: redis-server as redis on port 6379, data in /data."""
    return example_layout("redis")
