"""What both guest images hold below their own /init: busybox and its applets, the kernel
modules, the shared boot steps (/lib/volant/boot.sh, from boot.sh here), acpid's power-button
wiring, udhcpc's script and a hostname."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from scripts.guest.common import UDHCPC_SCRIPT, run
from scripts.guest.cpio import Tree

BOOT_SCRIPT = Path(__file__).resolve().with_name("boot.sh")
# busybox acpid names the power button PWRF (fixed ACPI event, pc/q35) or PWRB (a button
# device, as on microvm's GED); both run the same handler.
ACPID_CONF = b"PWRF PWRF/00000080\nPWRB PWRF/00000080\n"


def busybox_base(
    tree: Tree,
    busybox: Path,
    modules: Sequence[str],
    module_files: Mapping[str, Path],
    init: str,
    power_handler: bytes,
) -> None:
    """Fill tree with the shared layout; init is /init's text, modules the names /init loads in
    that order (their files from module_files), power_handler what acpid runs on the button."""
    for path in ("proc", "sys", "dev", "run", "tmp", "root", "etc/acpi/PWRF"):
        tree.dir(path)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    tree.chardev("dev/console", 5, 1)
    tree.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in run([str(busybox), "--list-full"]).split():
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")
    for name in modules:
        tree.file(f"lib/modules/{name}.ko", module_files[name].read_bytes())
    boot = BOOT_SCRIPT.read_text().replace("@MODULES@", " ".join(modules))
    tree.file("lib/volant/boot.sh", boot.encode())
    tree.file("init", init.encode(), 0o755)
    tree.file("etc/acpi/PWRF/00000080", power_handler, 0o755)
    tree.file("etc/acpid.conf", ACPID_CONF)
    tree.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    tree.file("etc/hostname", b"volant\n")
