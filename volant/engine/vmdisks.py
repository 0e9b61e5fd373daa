"""VMDisks: the rootfs a plugin's VMs share and the writable disk each VM keeps its own writes on.

A rootfs plugin boots the host's agent image as any other; its rootfs (the artifact cache's
verified file, one per checksum, shared by every VM of the plugin and never copied) is attached
read-only, and the agent mounts it under an overlay. The overlay's upper layer is the VM's own
disk: a sparse ext4 file `<state_dir>/disks/<vm>.img`, made at the VM's first launch, kept over
stops, daemon restarts and host reboots, and removed with the VM. An ephemeral VM (asked at
create, or the manifest's rootfs.ephemeral) gets a tmpfs upper layer in the guest instead, and
no disk.

The disk is a host resource like a tap: made through the ledger, removed by name, reconciled at
start by the repair (a VM's disk is adopted, a disk without a VM removed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from volant.engine.ledger import Ledger
from volant.engine.ports import Disks
from volant.model import (
    ROOTFS_SERIAL,
    UPPER_SERIAL,
    Disk,
    GuestRoot,
    Manifest,
    ResourceKind,
    Usage,
    VirtualMachine,
)

log = logging.getLogger("volant.engine.engine")

MIB = 1024 * 1024


class VMDisks:
    """Rootfs and writable disks of VMs: what to attach, making, measuring and removing them."""

    def __init__(self, ledger: Ledger, files: Disks, root: Path, size_mb: int) -> None:
        self.ledger = ledger
        self.files = files
        self.root = root
        self.size_mb = size_mb

    def path(self, vm: str) -> Path:
        return self.root / f"{vm}.img"

    async def check_rootfs(self, path: Path, manifest: Manifest) -> None:
        """Refuse a rootfs that is not a whole file system of its format (field rootfs)."""
        assert manifest.rootfs is not None
        await self.files.check_rootfs(path, manifest.rootfs.format.value)

    def layout(
        self, vm: VirtualMachine, manifest: Manifest, rootfs: Path
    ) -> tuple[tuple[Disk, ...], GuestRoot]:
        """The disks a rootfs VM boots with (the shared rootfs read-only, then its own disk
        unless it is ephemeral) and the root the agent assembles from them."""
        assert manifest.rootfs is not None
        fmt = manifest.rootfs.format.value
        shared = Disk(rootfs, ROOTFS_SERIAL, read_only=True)
        if self.ephemeral(vm, manifest):
            return (shared,), GuestRoot(fmt)
        own = Disk(self.path(vm.name), UPPER_SERIAL, read_only=False)
        return (shared, own), GuestRoot(fmt, upper=UPPER_SERIAL)

    @staticmethod
    def ephemeral(vm: VirtualMachine, manifest: Manifest) -> bool:
        return vm.ephemeral or (manifest.rootfs is not None and manifest.rootfs.ephemeral)

    async def ensure(self, vm: str, disks: tuple[Disk, ...]) -> None:
        """Make the VM's writable disk when disks has one that does not exist yet (its first
        launch); an existing one keeps the VM's writes and is left as it is."""
        for disk in disks:
            if disk.serial == UPPER_SERIAL and await self.files.space(disk.path) is None:
                await self._make(vm, disk.path)

    async def _make(self, vm: str, path: Path) -> None:
        size = self.size_mb * MIB
        await self.ledger.make(
            vm,
            ResourceKind.DISK,
            str(path),
            lambda: self.files.make(path, size, vm),
            lambda: self.files.remove(path),
        )
        log.info("VM %s: made its disk %s (%d MiB, sparse)", vm, path, self.size_mb)

    async def remove(self, vm: str) -> None:
        """Remove the VM's disk, if it has one (the VM is being deleted, or its create undone)."""
        path = self.path(vm)
        await self.ledger.remove(ResourceKind.DISK, str(path), lambda: self.files.remove(path))

    async def usage(self, vm: str, usage: Usage) -> Usage:
        """usage with the VM's disk space filled in (left None without a disk)."""
        space = await self.files.space(self.path(vm))
        if space is None:
            return usage
        return Usage(
            cpu_seconds=usage.cpu_seconds,
            memory_bytes=usage.memory_bytes,
            disk_bytes=space.allocated_bytes,
            disk_size_bytes=space.size_bytes,
        )

    async def scan(self) -> dict[str, str]:
        """Every disk file on the host: path -> VM name."""
        return await self.files.scan(self.root)
