"""Volumes: create, list, get, resize (grow only), delete, and attach at a VM's start.

A volume is a sparse raw file under <state_dir>/volumes (DESIGN.md, Storage), recorded in the
ledger like every host resource, formatted ext4 when first attached to a starting VM, and used
by one running VM at a time. Its file outlives every VM.

"In use" is decided under one lock: a volume is in use when a VM that has it is starting,
running or stopping by the store, or when a VM claimed it at its start (the claim is taken
before that VM's status says `starting`, so two concurrent starts cannot both win). A claim
ends by itself once its VM is gone, or has ended (stopped, crashed, error) after it claimed.
A volume in use cannot be resized (409): growing the file system of a disk a guest has
mounted would corrupt it; stop the VM, resize, start it again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime

from volant.engine.faults import Faults
from volant.engine.ledger import Ledger
from volant.engine.ports import VolumeFiles, VolumeStore
from volant.model import (
    Conflict,
    Disk,
    GuestMount,
    InvalidArgument,
    InvalidState,
    NameTaken,
    ResourceKind,
    Volume,
    VolumeMount,
    format_size,
    parse_size,
    validate_volume_name,
)
from volant.model.validate import validate_name

log = logging.getLogger("volant.engine.engine")

USING = frozenset({"starting", "running", "stopping"})
ENDED = frozenset({"stopped", "crashed", "error"})


class Volumes:
    """The volume verbs and the start hook; explicit collaborators, no back-pointer."""

    def __init__(
        self, store: VolumeStore, ledger: Ledger, files: VolumeFiles, faults: Faults
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.files = files
        self.faults = faults
        self._lock = asyncio.Lock()
        self._claims: dict[str, tuple[str, datetime]] = {}

    # -- read verbs ---------------------------------------------------------------------------

    async def list_volumes(self) -> list[Volume]:
        return [await self._shown(v) for v in await self.store.list_volumes()]

    async def get_volume(self, name: str) -> Volume:
        return await self._shown(await self.store.get_volume(validate_volume_name(name)))

    async def vm_volumes(self, vm: str) -> list[VolumeMount]:
        """The volumes of a VM, for `vms get`."""
        return await self.store.vm_volumes(validate_name(vm))

    # -- write verbs --------------------------------------------------------------------------

    async def create_volume(self, name: str, size: int | str) -> Volume:
        """Make the sparse file (recorded), then the row; unformatted until its first use."""
        name, size = validate_volume_name(name), parse_size(size)
        async with self._lock, self.faults.verb("volume-create"):
            if await self.store.volume_exists(name):
                raise NameTaken(f"a volume named {name!r} already exists", field="name")
            path = self.files.path(name)
            if await self.files.stat(name) is not None:
                raise Conflict(
                    f"a file is in the way of volume {name!r}: {path}",
                    hint="move it away (volantd removes such files at its next start)",
                )
            await self.ledger.make(
                "",
                ResourceKind.VOLUME,
                str(path),
                lambda: self.files.create(name, size),
                lambda: self.files.remove(name),
            )
            self.faults.at("file-made")
            try:
                volume = await self.store.create_volume(name, size)
            except BaseException:
                await asyncio.shield(self._remove_file(name))
                raise
            self.faults.at("recorded")
        log.info("volume %s created (%s)", name, format_size(size))
        return await self._shown(volume)

    async def resize_volume(self, name: str, size: int | str) -> Volume:
        """Grow the file and, when formatted, its file system; refused smaller, and while a
        VM uses the volume (409)."""
        name, size = validate_volume_name(name), parse_size(size)
        async with self._lock, self.faults.verb("volume-resize"):
            volume = await self.store.get_volume(name)
            current = await self._file_size(volume)
            if size < max(volume.size_bytes, current):
                have = format_size(max(volume.size_bytes, current))
                raise InvalidArgument(
                    f"volume {name!r} is {have}; volumes only grow, not to {format_size(size)}",
                    hint="copy the data to a new, smaller volume instead",
                    field="size",
                )
            user = await self._user(name)
            if user is not None:
                raise InvalidState(
                    f"volume {name!r} is in use by VM {user!r}; it can only grow while no VM "
                    "runs with it",
                    hint=f"`volar vms stop {user}`, resize, then start it again",
                )
            if size == volume.size_bytes == current:
                return await self._shown(volume)
            await self.files.grow(name, size)
            self.faults.at("grown")
            if volume.formatted:
                await self.files.grow_fs(name)
            self.faults.at("fs-resized")
            volume = await self.store.update_volume(name, size_bytes=size)
            self.faults.at("resized")
        log.info("volume %s grown to %s", name, format_size(size))
        return await self._shown(volume)

    async def delete_volume(self, name: str) -> None:
        """Delete the row (Conflict while any VM has the volume), then its file."""
        name = validate_volume_name(name)
        async with self._lock, self.faults.verb("volume-delete"):
            await self.store.delete_volume(name)
            self.faults.at("forgotten")
            await self._remove_file(name)
            self.faults.at("removed")
            self._claims.pop(name, None)
        log.info("volume %s deleted", name)

    # -- the start hook -----------------------------------------------------------------------

    async def attach(self, vm: str) -> tuple[tuple[Disk, ...], tuple[GuestMount, ...]]:
        """The disks and mounts of a VM about to start: claims its volumes (Conflict when
        another VM uses one), formats those used for the first time, and finishes a grow that
        a crash cut short."""
        mounts = await self.store.vm_volumes(vm)
        if not mounts:
            return (), ()
        async with self._lock:
            for mount in mounts:
                user = await self._user(mount.name, besides=vm)
                if user is not None:
                    raise Conflict(
                        f"volume {mount.name!r} is in use by VM {user!r}; a volume is used by "
                        "one running VM at a time",
                        hint=f"stop VM {user} first (`volar vms stop {user}`)",
                        field="volumes",
                    )
            for mount in mounts:
                await self._ready(await self.store.get_volume(mount.name))
            claimed = datetime.now(UTC)
            for mount in mounts:
                self._claims[mount.name] = (vm, claimed)
        disks = tuple(Disk(self.files.path(m.name), m.name, m.read_only) for m in mounts)
        guest = tuple(GuestMount(m.name, m.path, m.read_only) for m in mounts)
        return disks, guest

    async def _ready(self, volume: Volume) -> None:
        """The volume's file exists, carries ext4 and is as large as recorded."""
        name = volume.name
        stat = await self.files.stat(name)
        if stat is None:
            raise InvalidState(
                f"the file of volume {name!r} is missing ({self.files.path(name)})",
                hint=f"its data is gone: `volar volumes delete {name}` (after deleting its "
                "VMs) and create it again",
                field="volumes",
            )
        if not volume.formatted:
            log.info("volume %s: first use, formatting it ext4", name)
            await self.files.format(name)
            await self.store.update_volume(
                name, formatted=True, size_bytes=max(stat[0], volume.size_bytes)
            )
        elif stat[0] > volume.size_bytes:
            log.warning("volume %s: finishing a grow to %d bytes cut short", name, stat[0])
            await self.files.grow_fs(name)
            await self.store.update_volume(name, size_bytes=stat[0])

    async def _user(self, name: str, besides: str = "") -> str | None:
        """The VM other than besides that uses the volume now, if any."""
        volume = await self.store.get_volume(name)
        for attachment in volume.attachments:
            if attachment.vm != besides and attachment.vm_status in USING:
                return attachment.vm
        claim = self._claims.get(name)
        if claim is None or claim[0] == besides:
            return None
        holder, since = claim
        state = await self.store.vm_state(holder)
        if state is None or (state[0] in ENDED and state[1] > since):
            # It ended after it claimed: the claim went with it (unless a start, which holds
            # the lock, claimed the volume anew while this looked).
            if self._claims.get(name) == claim:
                del self._claims[name]
            return None
        return holder

    # -- helpers --------------------------------------------------------------------------------

    async def _shown(self, volume: Volume) -> Volume:
        """The volume with what its file says and who uses it."""
        stat = await self.files.stat(volume.name)
        return replace(
            volume,
            allocated_bytes=None if stat is None else stat[1],
            missing=stat is None,
            in_use_by=await self._user(volume.name),
        )

    async def _file_size(self, volume: Volume) -> int:
        stat = await self.files.stat(volume.name)
        if stat is None:
            raise InvalidState(
                f"the file of volume {volume.name!r} is missing ({self.files.path(volume.name)})",
                hint=f"`volar volumes delete {volume.name}` and create it again",
            )
        return stat[0]

    async def _remove_file(self, name: str) -> None:
        path = str(self.files.path(name))
        await self.ledger.remove(ResourceKind.VOLUME, path, lambda: self.files.remove(name))

    # -- repair at start --------------------------------------------------------------------------

    async def wanted_files(self) -> dict[str, str]:
        """The file of every recorded volume (path -> ""; no VM owns it). A recorded volume
        whose file is gone stays recorded, and says so (docs/volumes.md)."""
        wanted: dict[str, str] = {}
        for volume in await self.store.list_volumes():
            if await self.files.stat(volume.name) is None:
                log.warning(
                    "volume %s: its file %s is missing; VMs that use it cannot start until it "
                    "is deleted and created again",
                    volume.name,
                    self.files.path(volume.name),
                )
            wanted[str(self.files.path(volume.name))] = ""
        return wanted

    async def found_files(self) -> dict[str, str]:
        """Every file in the volumes directory: path -> "" (volume files belong to no VM)."""
        return {path: "" for path in await self.files.scan()}
