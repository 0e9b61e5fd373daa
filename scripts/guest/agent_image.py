"""The agent guest: busybox, a lean python3.11 and the Volant agent.

Layout in the image: /init is agent/volant_agent/volant-init.sh (with scripts/guest/base.py's
shared layout below it), the agent is
compiled under /usr/lib/volant-agent/volant_agent. Plugins are not in it: each ships its own cpio
(scripts/guest/plugin_image.py) that boots appended to this one. Output: agent-initramfs.img
(newc cpio, not compressed: see build_agent_image) plus agent-initramfs.json (inputs digest,
sizes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from scripts.guest import python
from scripts.guest.base import BOOT_SCRIPT, busybox_base
from scripts.guest.common import (
    BUSYBOX,
    Apt,
    DebInfo,
    fetch_packages,
    log,
    sha256_file,
    write_atomic,
)
from scripts.guest.cpio import Tree, cpio_newc, gzip_bytes
from scripts.guest.modules import module_index, resolve_modules

FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parents[2]
AGENT_PACKAGE = REPO / "agent" / "volant_agent"
INIT_SCRIPT = AGENT_PACKAGE / "volant-init.sh"
IMAGE = "agent-initramfs.img"
META = "agent-initramfs.json"
# virtio_blk carries the config disk; the vsock transport and virtio_console (the agent's
# virtio-serial port where the host has no vhost-vsock) serve vsock mode; pvpanic_mmio tells
# QEMU of a kernel panic (its pvpanic device), so volantd can tell a panic from a reboot.
WANTED_MODULES = (
    "virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng", "virtio_blk", "button", "evdev",
    "vmw_vsock_virtio_transport", "virtio_console", "pvpanic_mmio",
)  # fmt: skip
# The file systems of a rootfs plugin's root (ext4, for its writable disk, is built in): in the
# image, but loaded by the agent only in the VMs that boot a rootfs, and only the rootfs'
# format's and overlay (/lib/volant/storage-modules: one line per module, `name: what to insmod,
# in order`), so initramfs plugins boot as before.
STORAGE_MODULES = ("erofs", "squashfs", "overlay")
# The standard library promised to plugin workloads that run on the image's python3 (the hello
# example does); kept with everything they import, on top of what the agent itself needs.
WORKLOAD_MODULES = (
    "argparse", "http.client", "http.server", "json", "logging", "os", "signal", "socketserver",
    "subprocess", "sys", "threading", "urllib.parse", "urllib.request",
)  # fmt: skip
# acpid runs this on the power button: PID 1 does the clean power-off (agent, workload, sync).
POWER_HANDLER = b"#!/bin/sh\necho 'volant-init: power button'\nkill -USR2 1\n"


def input_files() -> list[Path]:
    """The checkout files the image is built from (their bytes go into its inputs digest)."""
    here = Path(__file__).resolve().parent
    files = [*sorted(here.glob("*.py")), BOOT_SCRIPT, *sorted(AGENT_PACKAGE.rglob("*"))]
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def inputs_key(debs: list[DebInfo]) -> str:
    digest = hashlib.sha256(f"agent-format={FORMAT_VERSION}\n".encode())
    for deb in debs:
        digest.update(f"{deb.package} {deb.version} {deb.sha256}\n".encode())
    for source in input_files():
        digest.update(f"{source.relative_to(REPO)}\n".encode() + source.read_bytes())
    return digest.hexdigest()


def _up_to_date(out: Path, key: str) -> bool:
    try:
        meta = json.loads((out / META).read_text())
        return bool(meta.get("inputs_sha256") == key and sha256_file(out / IMAGE) == meta["sha256"])
    except (OSError, ValueError, KeyError):
        return False


def _base(tree: Tree, busybox: Path, kernel_modules: Path) -> list[str]:
    index = module_index(kernel_modules)
    modules = resolve_modules(index, WANTED_MODULES)
    busybox_base(tree, busybox, modules, index, INIT_SCRIPT.read_text(), POWER_HANDLER)
    lines = []
    for wanted in STORAGE_MODULES:
        needed = [m for m in resolve_modules(index, [wanted]) if m not in modules]
        for name in needed:
            tree.file(f"lib/modules/{name}.ko", index[name].read_bytes())
        lines.append(f"{wanted}: {' '.join(needed)}\n")
    tree.file("lib/volant/storage-modules", "".join(lines).encode())
    # glibc's built-in files backend answers "localhost" from here (base_url may name it).
    tree.file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n")
    tree.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    tree.file("etc/group", b"root:x:0:\n")
    return modules


def _workload_script(work: Path) -> Path:
    """A script that imports WORKLOAD_MODULES: modulefinder's way to keep them and their needs."""
    script = work / "workload_modules.py"
    script.write_text("".join(f"import {name}\n" for name in WORKLOAD_MODULES))
    return script


def build_agent_image(out: Path, cache: Path) -> dict[str, object]:
    """Build (or keep, when its inputs are unchanged) out/agent-initramfs.img."""
    apt = Apt()
    kernel = apt.kernel_package()
    names = [kernel, BUSYBOX, *python.PACKAGES]
    debs = [apt.show(name) for name in names]
    out.mkdir(parents=True, exist_ok=True)
    if _up_to_date(out, inputs_key(debs)):
        log(f"{out / IMAGE} is up to date")
        meta: dict[str, object] = json.loads((out / META).read_text())
        return meta
    debs, roots = fetch_packages(apt, names, cache)
    key = inputs_key(debs)
    version = kernel.removeprefix("linux-image-")
    tree = Tree()
    modules = _base(tree, roots[1] / "bin" / "busybox", roots[0] / "lib" / "modules" / version)
    # A private work directory: test sessions running side by side may build at the same time.
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".agent-work-"))
    try:
        # The stdlib is cut down to what the agent and the promised workload modules import.
        scripts = [AGENT_PACKAGE / "__main__.py", _workload_script(work)]
        facts = python.add_python(tree, roots[2:], work, scripts, [AGENT_PACKAGE.parent])
        interpreter = work / "pystage" / "usr" / "bin" / python.PY
        agent = python.compile_package(interpreter, AGENT_PACKAGE, "usr/lib/volant-agent", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path, pyc in agent.items():
        tree.file(path, pyc)
    tree.file("usr/lib/volant-agent/volant_agent/volant-init.sh", INIT_SCRIPT.read_bytes())
    # Left uncompressed: under TCG the guest kernel inflates gzip slowly. Measured here, the agent
    # started 2.1-2.3 s after boot from the raw archive against 2.8-3.1 s from the gzip'd one
    # (7.5 MB gzip'd, 18 MB raw); the file is only read into guest RAM and freed after unpacking.
    image = cpio_newc(tree.entries.values())
    write_atomic(out / IMAGE, image)
    meta = {
        "kernel_package": kernel,
        "modules": modules,
        "packages": {deb.package: deb.version for deb in debs},
        "workload_modules": list(WORKLOAD_MODULES),
        "entries": len(tree.entries),
        "bytes": len(image),
        "gzip_bytes": len(gzip_bytes(image)),
        "sha256": hashlib.sha256(image).hexdigest(),
        "inputs_sha256": key,
        **facts,
    }
    write_atomic(out / META, (json.dumps(meta, indent=2) + "\n").encode())
    log(f"built {out / IMAGE}: {len(image)} bytes, uncompressed newc cpio")
    return meta
