"""Plugins for tests, benchmarks and demos that boot the small busybox guest.

VMs need an installed plugin, and a plugin's manifest names an initramfs with its sha256. The
busybox guest ignores the manifest, so a test plugin is a manifest plus a tiny archive holding one
marker file (/etc/volant-plugin) that volantd appends to the guest image like any plugin's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from scripts.guest.cpio import Tree, cpio_newc

BLOCK = 512


def test_manifest(name: str, artifact: Path, **changes: Any) -> dict[str, Any]:
    """A valid manifest for plugin name; changes are merged on top.

    Its initramfs is artifact, named relative to the manifest (which sits beside it), so the
    plugin installs wherever the two files are seen from: install it with its origin.
    """
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": name,
        "resources": {"cpu_cores": 1, "memory_mb": 192},
        "workload": {"type": "process", "entrypoint": ["/bin/true"]},
        "initramfs": {"path": artifact.name, "checksum": f"sha256:{digest}"},
        "network": {"mode": "bridged"},
        "labels": {"test": "true"},
    }
    manifest.update(changes)
    return manifest


def write_test_plugin(directory: Path, name: str = "demo", **changes: Any) -> Path:
    """Write <directory>/<name>.cpio and <directory>/<name>.json; return the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    tree = Tree()
    tree.file("etc/volant-plugin", f"{name}\n".encode())
    artifact = directory / f"{name}.cpio"
    artifact.write_bytes(cpio_newc(tree.entries.values(), block=BLOCK))
    path = directory / f"{name}.json"
    path.write_text(json.dumps(test_manifest(name, artifact, **changes), indent=2) + "\n")
    return path
