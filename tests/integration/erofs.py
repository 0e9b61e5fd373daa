"""Look inside an erofs image the way the guest will: mounted by the kernel, read-only."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# In a private mount namespace, so the mount vanishes with the shell even if a test dies.
_SCRIPT = """
set -e
mount -t erofs -o loop,ro "$1" "$2"
cd "$2"
find . -mindepth 1 -printf '%P\\t%y\\t%U:%G\\t%m\\t%l\\n'
"""


@dataclass(frozen=True)
class Node:
    kind: str  # find's %y: f, d, l, ...
    owner: str  # "uid:gid"
    mode: int
    target: str  # a symlink's target, else ""


def erofs_tree(image: Path) -> dict[str, Node]:
    """Every path in the image (relative, no leading slash) with its type, owner and mode."""
    with tempfile.TemporaryDirectory() as mnt:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "sh",
             str(image), mnt],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, f"mounting {image} failed: {proc.stderr}"
    tree = {}
    for line in proc.stdout.splitlines():
        path, kind, owner, mode, target = line.split("\t")
        tree[path] = Node(kind, owner, int(mode, 8), target)
    return tree


def erofs_read(image: Path, path: str) -> bytes:
    """One file's content, read through the kernel's erofs driver."""
    with tempfile.TemporaryDirectory() as mnt:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t erofs -o loop,ro "$1" "$2" && cat "$2/$3"', "sh", str(image), mnt, path],
            capture_output=True, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, f"reading {path} from {image} failed: {proc.stderr!r}"
    return proc.stdout
