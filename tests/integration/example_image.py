"""The example image recipe (examples/images/nginx), built once and cached under .cache/.

The recipe installs Debian packages with mmdebstrap, which takes minutes; the layout is kept
until the recipe's files change. The bench imports the same layout.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "images" / "nginx"
CACHE = ROOT / ".cache" / "example-images"


def nginx_layout() -> Path:
    """The OCI layout examples/images/nginx/build.sh makes (tag "latest")."""
    digest = hashlib.sha256()
    for path in sorted(RECIPE.iterdir()):
        if path.suffix == ".md":
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    layout = CACHE / f"nginx-{digest.hexdigest()[:16]}"
    if layout.is_dir():
        return layout
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        built = Path(tmp) / "layout"
        proc = subprocess.run(
            [str(RECIPE / "build.sh"), str(built)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout}\n{proc.stderr}"
        for old in CACHE.glob("nginx-*"):
            shutil.rmtree(old)
        built.rename(layout)
    return layout
