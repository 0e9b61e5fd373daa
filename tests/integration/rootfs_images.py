"""A small rootfs for rootfs-plugin tests: busybox-static's binary, a passwd with a non-root user
(app, uid 1000, home /home/app), and a 16 MiB file so that a copy of the base would show in a
VM's disk usage. Packed with mkfs.erofs, reproducibly, and cached under .cache/ until this file
or busybox changes. No image from the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "rootfs-test"
BUSYBOX = Path("/bin/busybox")
APP_UID = 1000
BALLAST_MIB = 16
TOOLS = ("sh", "id", "ls", "cat", "cp", "mkdir", "echo", "touch", "httpd", "sleep", "stat",
         "stty", "pwd", "head")  # fmt: skip
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"
FIXED_UUID = "6c6f7661-6e74-4000-8000-726f6f746673"

# The test workload: count its boots in its home (on the VM's disk, or in the tmpfs), then serve
# what it sees over HTTP on 8081: its uid and groups, the root's listing, its boots, the
# volumes at /data and /ro if there are (their listing, and whether it can write there).
SCRIPT = """
set -e
mkdir -p www
echo boot >> boots
cp boots www/boots.txt
id -u > www/uid.txt
id -G > www/groups.txt
ls / > www/root.txt
cat /etc/hostname > www/hostname.txt
for d in data ro; do
    [ -d /$d ] || continue
    ls /$d > www/$d.txt
    if touch /$d/probe 2>/dev/null; then echo rw; else echo ro; fi > www/$d-mode.txt
done
exec httpd -f -p 8081 -h /home/app/www
"""


def _tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for tool in TOOLS:
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    home = root / "home" / "app"
    home.mkdir(parents=True)
    os.chown(home, APP_UID, APP_UID)
    (root / "srv").mkdir()
    # Not zeros: erofs would store a file of zeros as a hole.
    block = hashlib.sha256(b"volant").digest() * (1 << 15)  # 1 MiB
    (root / "srv" / "ballast").write_bytes(block * BALLAST_MIB)


def rootfs_image() -> Path:
    """The erofs image (built once per input; the path is stable until the inputs change)."""
    key = hashlib.sha256(Path(__file__).read_bytes() + BUSYBOX.read_bytes()).hexdigest()[:16]
    image = CACHE / f"app-{key}.erofs"
    if image.is_file():
        return image
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tree = Path(tmp) / "tree"
        _tree(tree)
        out = Path(tmp) / "app.erofs"
        subprocess.run(
            ["mkfs.erofs", "--quiet", f"-U{FIXED_UUID}", "-T0", str(out), str(tree)],
            check=True,
            capture_output=True,
        )
        for old in CACHE.glob("app-*.erofs"):
            old.unlink()
        out.rename(image)
    return image


def rootfs_manifest(image: Path, name: str, **changes: Any) -> dict[str, Any]:
    """A plugin manifest booting image (named relative to the manifest, which sits beside it)
    with the test workload as the image's user app."""
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": name,
        "resources": {"cpu_cores": 1, "memory_mb": 192},
        "workload": {
            "type": "http",
            "entrypoint": ["/bin/sh", "-c", SCRIPT],
            "workdir": "/home/app",
            "user": "app",
            "base_url": "http://127.0.0.1:8081",
            "health_check": {"path": "/uid.txt", "timeout_ms": 1000},
        },
        "rootfs": {"path": image.name, "checksum": f"sha256:{digest}", "format": "erofs"},
        "network": {"mode": "bridged"},
    }
    manifest.update(changes)
    return manifest


def write_rootfs_plugin(directory: Path, name: str, image: Path, **changes: Any) -> Path:
    """The image and its manifest in directory; the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    local = directory / image.name
    if not local.exists():
        os.link(image, local) if image.stat().st_dev == directory.stat().st_dev else shutil.copy(
            image, local
        )
    path = directory / f"{name}.json"
    path.write_text(json.dumps(rootfs_manifest(local, name, **changes), indent=2))
    return path
