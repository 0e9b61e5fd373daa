"""Where /v1/files works for an initramfs plugin: the agent's root without the agent's own files.

An initramfs plugin's workload runs in the agent's own root, so that root is its root too; but
the files route must not reach the agent's code, its init and its config. The agent binds `/`
(not recursively: /proc, /sys, /dev and /run stay the empty directories under them) at
/volant/view, binds the workload's scratch /tmp and its volumes back in, and covers its own
files there: its directories with an empty read-only tmpfs, its files with an empty file. The
files worker then chroots into the view. The agent's secret is never on a file system: it is
read from the config disk (a block device, absent from the view) into memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from volant_agent.app import Agent
from volant_agent.rootfs import Assembly, Storage, StorageError
from volant_agent.workload import Health, Supervisor

log = logging.getLogger(__name__)

VIEW = Path("/volant/view")
# The agent's own files in its image (scripts/guest/): covered in the view.
OWN = ("usr/lib/volant-agent", "lib/volant", "etc/acpi", "etc/acpid.conf", "etc/udhcpc.script",
       "init", "volant")  # fmt: skip
SHARED = ("tmp",)


class View(Assembly):
    """The view's mounts, unmounted in reverse at stop (Assembly's bookkeeping)."""

    def __init__(self, base: Path = VIEW) -> None:
        super().__init__(Storage(), base)

    async def make(self, volumes: Sequence[str]) -> Path | None:
        """Mount the view; its path, or None (and nothing mounted) when it cannot be made."""
        view = self.base
        try:
            view.mkdir(parents=True, exist_ok=True)
            blank = view.parent / "blank"
            blank.touch(mode=0o444)
            await self._mount(view, "--bind", "/")
            for sub in (*SHARED, *(v.strip("/") for v in volumes)):
                if (view / sub).is_dir() and not (view / sub).is_symlink():
                    await self._mount(view / sub, "--bind", f"/{sub}")
            for own in OWN:
                target = view / own
                # A symlink (/linuxrc -> /bin/busybox) is never a mount point: mount(2) would
                # follow it out of the view, and the link itself holds nothing.
                if target.is_symlink():
                    continue
                if target.is_dir():
                    await self._mount(target, "-t", "tmpfs", "-o", "ro,size=4k,mode=0755", "tmpfs")
                elif target.exists():
                    await self._mount(target, "--bind", str(blank))
        except (OSError, StorageError) as exc:
            log.error("no files view of the agent's root: %s", exc)
            await self.unmount()
            return None
        return view


async def files_view(
    supervisor: Supervisor, assembly: Assembly | None, wanted: bool | None
) -> View | None:
    """The view, made when the workload runs in the agent's root and the agent in its guest
    (wanted None: when its parent is PID 1); None otherwise."""
    in_guest = wanted if wanted is not None else os.getppid() == 1
    if not in_guest or supervisor.root is not None or supervisor.health is Health.FAILED:
        return None
    view = View()
    volumes = [m.path for m in assembly.storage.mounts] if assembly is not None else []
    return view if await view.make(volumes) is not None else None


async def attach_view(
    agent: Agent, assembly: Assembly | None, wanted: bool | None, mounted: list[Assembly]
) -> None:
    """Make the view for agent's workload, if it needs one; it goes first in mounted (it binds
    the volumes, so it is unmounted before them)."""
    if agent.supervisor is None:
        return
    view = await files_view(agent.supervisor, assembly, wanted)
    if view is not None:
        agent.files_root = view.base
        mounted.insert(0, view)
