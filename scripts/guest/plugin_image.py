"""A plugin's own initramfs: its files as a newc cpio that boots appended to the agent image.

The kernel unpacks concatenated cpio archives in order, so agent-initramfs.img followed by
<name>.cpio is one root filesystem: the agent from the first, the plugin's files under
/opt/volant/plugins/<name>/ from the second. Every file of the plugin directory goes in except
what describes the plugin rather than runs in it (manifest*, *.sig, README*) and the archive
itself; caches and hidden files stay out too, so two checkouts give the same bytes. Owners,
mtimes and inode numbers are fixed, entries sorted, and modes reduced to 0644/0755 from the
owner's execute bit (what git records).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from scripts.guest.common import BuildError, write_atomic
from scripts.guest.cpio import Tree, cpio_newc

PLUGINS_DIR = "opt/volant/plugins"
EXCLUDE = ("manifest*", "*.sig", "README*", "*.cpio", "*.pyc", ".*")
SKIP_DIRS = ("__pycache__", ".*")
# The cpio tool's block size: the archive ends on a whole block, as `cpio -o` leaves it.
BLOCK = 512


def _skipped(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def plugin_tree(plugin: Path, name: str | None = None) -> Tree:
    """The plugin directory's files as they appear in the guest, under opt/volant/plugins/name."""
    name = name or plugin.name
    tree = Tree()
    tree.dir(f"{PLUGINS_DIR}/{name}")
    for root, dirs, files in os.walk(plugin):
        dirs[:] = sorted(d for d in dirs if not _skipped(d, SKIP_DIRS))
        base = Path(root)
        rel_dir = base.relative_to(plugin).as_posix()
        dest = f"{PLUGINS_DIR}/{name}" + ("" if rel_dir == "." else f"/{rel_dir}")
        for d in dirs:
            if (base / d).is_symlink():
                tree.symlink(f"{dest}/{d}", os.readlink(base / d))
            else:
                tree.dir(f"{dest}/{d}")
        for f in sorted(files):
            path = base / f
            if _skipped(f, EXCLUDE):
                continue
            if path.is_symlink():
                tree.symlink(f"{dest}/{f}", os.readlink(path))
            elif path.is_file():
                executable = path.stat().st_mode & 0o100
                tree.file(f"{dest}/{f}", path.read_bytes(), 0o755 if executable else 0o644)
            else:
                raise BuildError(f"{path}: only regular files and symlinks go into a plugin")
    return tree


def plugin_cpio(plugin: Path, name: str | None = None) -> bytes:
    """The plugin's archive: uncompressed newc, zero-padded to a whole 512-byte block."""
    return cpio_newc(plugin_tree(plugin, name).entries.values(), block=BLOCK)


def write_plugin_cpio(plugin: Path, out: Path | None = None) -> Path:
    """Write plugin/<name>.cpio (or out); untouched when its bytes would not change."""
    target = out or plugin / f"{plugin.name}.cpio"
    data = plugin_cpio(plugin)
    try:
        if target.read_bytes() == data:
            return target  # keeps the mtime, so make sees nothing new
    except FileNotFoundError:
        pass
    write_atomic(target, data)
    return target


def sha256_checksum(data: bytes) -> str:
    """The manifest's spelling of a digest: sha256:<hex>."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def concat_initramfs(out: Path, parts: Sequence[Path]) -> Path:
    """Write the parts end to end into out (the one initramfs a hypervisor takes) and return it.

    Each part is zero-padded to 4 bytes: the kernel skips zeros between archives but wants each
    newc header 4-byte aligned.
    """
    if not parts:
        raise BuildError("an initramfs needs at least one archive")
    chunks = []
    for part in parts:
        data = part.read_bytes()
        chunks += [data, b"\0" * (-len(data) % 4)]
    write_atomic(out, b"".join(chunks))
    return out
