#!/usr/bin/env python3
"""Build the test guests: Debian's cloud kernel, two initramfs images and the example plugins.

Outputs in --out: vmlinuz; initramfs.img (busybox only: /init serves its name over httpd) with
guest.json (kernel version, sha256 of every output and of the inputs); agent-initramfs.img (busybox,
a trimmed python3.11 and the Volant agent as PID 1's child) with agent-initramfs.json. Both images
are newc cpio (the busybox one gzip'd), byte-for-byte reproducible, and rebuilt only when the
digest of their inputs changes. Each example plugin examples/plugins/<name>/ gets its own
<name>.cpio beside its manifest, booted appended to the agent image. Every output is written to a
temporary file and renamed into place. The steps live in scripts/guest/.

Standard library only: it runs before the virtualenv exists (make deps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `scripts.guest` importable from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.guest.agent_image import build_agent_image
from scripts.guest.base import busybox_base
from scripts.guest.common import (
    Apt,
    BuildError,
    DebInfo,
    extract,
    log,
    sha256_file,
    write_atomic,
)
from scripts.guest.cpio import Tree, cpio_newc, gzip_bytes
from scripts.guest.modules import modinfo, module_index, resolve_modules
from scripts.guest.plugin_image import write_plugin_cpio

__all__ = [
    "BuildError",
    "Tree",
    "build",
    "build_plugins",
    "cpio_newc",
    "gzip_bytes",
    "main",
    "modinfo",
    "module_index",
    "resolve_modules",
]

# Wanted modules; their dependencies are added from .modinfo. button + evdev carry the ACPI power
# button to acpid; virtio_mmio serves the microvm machine, virtio_pci the pc/q35 machines;
# pvpanic_mmio reports a kernel panic to QEMU's pvpanic device.
WANTED_MODULES = (
    "virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng", "button", "evdev", "pvpanic_mmio",
)  # fmt: skip
# Bump when the initramfs layout changes in a way the inputs' hashes do not capture.
FORMAT_VERSION = 1
HERE = Path(__file__).resolve().parent
EXAMPLE_PLUGINS = HERE.parent / "examples" / "plugins"
INIT_TEMPLATE = HERE / "guest_init.sh"
SOURCES = (
    Path(__file__).resolve(),
    INIT_TEMPLATE,
    HERE / "guest" / "base.py",
    HERE / "guest" / "boot.sh",
    HERE / "guest" / "common.py",
    HERE / "guest" / "cpio.py",
    HERE / "guest" / "modules.py",
)

POWER_HANDLER = "#!/bin/sh\necho 'volant-init: power button, powering off'\nsync\npoweroff -f\n"


def build_tree(busybox: Path, index: dict[str, Path], modules: list[str]) -> Tree:
    tree = Tree()
    tree.dir("www")
    power = POWER_HANDLER.encode()
    busybox_base(tree, busybox, modules, index, INIT_TEMPLATE.read_text(), power)
    return tree


# --- driver --------------------------------------------------------------------------------


def inputs_key(debs: list[DebInfo]) -> str:
    digest = hashlib.sha256(f"format={FORMAT_VERSION}\n".encode())
    for deb in debs:
        digest.update(f"{deb.package} {deb.version} {deb.sha256}\n".encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def up_to_date(out: Path, key: str) -> bool:
    try:
        meta = json.loads((out / "guest.json").read_text())
        return bool(
            meta.get("inputs_sha256") == key
            and sha256_file(out / "vmlinuz") == meta["vmlinuz_sha256"]
            and sha256_file(out / "initramfs.img") == meta["initramfs_sha256"]
        )
    except (OSError, ValueError, KeyError):
        return False


def fetch(apt: Apt, debs: list[DebInfo], cache: Path) -> tuple[list[DebInfo], list[Path]]:
    """Download (or reuse) and unpack the debs; on failure refresh the lists once and retry."""
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    try:
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    except BuildError:
        # Stale lists name versions the archive no longer has: resolve again after an update.
        if not apt.refresh():
            raise
        debs = apt.resolve()
        paths = [apt.download(deb, cache / "debs") for deb in debs]
    return debs, [extract(path, cache / "extract") for path in paths]


def build(out: Path, cache: Path) -> dict[str, object]:
    apt = Apt()
    debs = apt.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if up_to_date(out, inputs_key(debs)):
        log(f"{out} is up to date ({debs[0].package})")
        meta: dict[str, object] = json.loads((out / "guest.json").read_text())
        return meta
    debs, (kernel_root, busybox_root) = fetch(apt, debs, cache)
    key = inputs_key(debs)
    kernel_pkg = debs[0].package
    kernel_version = kernel_pkg.removeprefix("linux-image-")
    vmlinuz = (kernel_root / "boot" / f"vmlinuz-{kernel_version}").read_bytes()
    index = module_index(kernel_root / "lib" / "modules" / kernel_version)
    modules = resolve_modules(index, WANTED_MODULES)
    tree = build_tree(busybox_root / "bin" / "busybox", index, modules)
    initramfs = gzip_bytes(cpio_newc(tree.entries.values()))
    write_atomic(out / "vmlinuz", vmlinuz)
    write_atomic(out / "initramfs.img", initramfs)
    meta = {
        "kernel_package": kernel_pkg,
        "kernel_version": kernel_version,
        "kernel_deb_version": debs[0].version,
        "busybox_version": debs[1].version,
        "modules": modules,
        "vmlinuz_sha256": hashlib.sha256(vmlinuz).hexdigest(),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
        "inputs_sha256": key,
    }
    write_atomic(out / "guest.json", (json.dumps(meta, indent=2) + "\n").encode())
    log(f"built {out} ({kernel_version}, {len(initramfs)} bytes of initramfs)")
    return meta


def build_plugins(plugins: Path = EXAMPLE_PLUGINS) -> list[Path]:
    """Write <dir>/<name>.cpio for every plugin directory (one with a manifest.json) under plugins.

    Says so when the manifest pins another checksum: the manifest must be updated with it.
    """
    built = []
    for manifest in sorted(plugins.glob("*/manifest.json")):
        archive = write_plugin_cpio(manifest.parent)
        checksum = "sha256:" + sha256_file(archive)
        pinned = json.loads(manifest.read_text()).get("initramfs", {}).get("checksum")
        log(f"plugin {manifest.parent.name}: {archive} {checksum}")
        if pinned is not None and pinned != checksum:
            log(f"warning: {manifest} pins {pinned}; update it to {checksum}")
        built.append(archive)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(".cache/guest"))
    parser.add_argument(
        "--cache", type=Path, default=None, help="where .debs are kept (default: <out>/../debs)"
    )
    parser.add_argument(
        "--no-agent", action="store_true", help="skip agent-initramfs.img (busybox guest only)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    cache: Path = (args.cache or out.parent).resolve()
    try:
        build(out, cache)
        if not args.no_agent:
            build_agent_image(out, cache)
        build_plugins()
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
