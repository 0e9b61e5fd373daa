"""Plugin builds from OCI images: a worker outside volantd's sandbox, followed and cleaned up.

`BuildService` owns the `plugin-build` verb. A build checks its request, then runs as a task:

1. its work directory `<state>/builds/<id>/` is made (ledger kind build_dir);
2. the worker (`python -m volant.storage.worker`) starts through a BuildRunner: a transient
   systemd service, or a child process (ledger kind build_unit);
3. volantd follows the worker's progress file and turns its lines into BUILD_PROGRESS events;
4. the worker's final record describes the image; the manifest is made from it and the flags
   (volant.plugins.fromimage) and installed exactly as `plugins install` does;
5. the worker and the work directory go, whatever happened.

A cancel stops the worker (SIGTERM: it cancels its tools and removes its partial output) and
skips the install. Builds live in memory only: at start, `repair` kills every worker and
removes every work directory an earlier daemon left, so a killed volantd leaves nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from volant.config import Config
from volant.engine.buildrun import (
    WORKER,
    BuildPaths,
    BuildRunner,
    NoBuildRunner,
    follow_worker,
)
from volant.engine.events import EventBus
from volant.engine.faults import Faults
from volant.engine.ledger import HostChange, Ledger
from volant.engine.ports import Store
from volant.model import (
    EventType,
    InternalError,
    NameTaken,
    NotFound,
    Plugin,
    PluginSource,
    ResourceKind,
    Unavailable,
    VolantError,
)
from volant.model.builds import Build, BuildSpec, BuildState, ImageFacts
from volant.model.validate import validate_name
from volant.plugins.fromimage import check_flags, manifest_text, plugin_name_for
from volant.storage import parse_image_ref

log = logging.getLogger("volant.engine.engine")

KEEP_FINISHED = 50  # finished builds kept for `GET /builds/{id}`
# Builds unpack and pack whole images: two at a time keep a host responsive; more wait
# ("queued"), and past MAX_PENDING a request is refused rather than queued for ever.
MAX_RUNNING = 2
MAX_PENDING = 16


Emit = Callable[[EventType, dict[str, Any]], Awaitable[None]]
Install = Callable[[PluginSource, bool], Awaitable[Plugin]]


@dataclass
class _Running:
    build: Build
    spec: BuildSpec
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    plugin: Plugin | None = None


def build_service(
    config: Config,
    store: Store,
    ledger: Ledger,
    bus: EventBus,
    faults: Faults,
    runner: BuildRunner | None,
    install: Install,
) -> BuildService:
    """The engine's build service, its paths from the config and its events on the bus."""

    async def emit(event_type: EventType, payload: dict[str, Any]) -> None:
        bus.publish(await store.append_event(event_type, "", payload))

    paths = BuildPaths(
        cache_dir=config.image_cache,
        builds_root=config.builds_dir,
        authfile=Path(config.images_authfile) if config.images_authfile else None,
        cert_dir=Path(config.images_cert_dir) if config.images_cert_dir else None,
    )
    return BuildService(
        store=store,
        ledger=ledger,
        runner=runner or NoBuildRunner(),
        faults=faults,
        paths=paths,
        emit=emit,
        install=install,
    )


class BuildService:
    """The plugin-build verb: start, follow, cancel, and repair at start."""

    def __init__(
        self,
        *,
        store: Store,
        ledger: Ledger,
        runner: BuildRunner,
        faults: Faults,
        paths: BuildPaths,
        emit: Emit,
        install: Install,
        worker: Sequence[str] = WORKER,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.runner = runner
        self.faults = faults
        self.paths = paths
        self._emit = emit
        self._install = install
        self._worker = tuple(worker)
        self._builds: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(MAX_RUNNING)

    # -- verbs ---------------------------------------------------------------------------------

    async def start_build(self, spec: BuildSpec) -> Build:
        """Check the request, start the build in the background and return it (running).

        Everything that can be known before the image is pulled is checked here, so a bad
        flag or a taken name fails at once and starts nothing.
        """
        parse_image_ref(spec.image)
        name = validate_name(spec.name or plugin_name_for(spec.image), "plugin")
        check_flags(spec, name)
        if not spec.replace:
            with contextlib.suppress(NotFound):
                await self.store.get_plugin(name)
                raise NameTaken(
                    f"plugin {name!r} is installed already",
                    hint="give another --name, or --replace to upgrade it",
                    field="name",
                )
        pending = [r.build for r in self._builds.values() if not r.build.state.is_final]
        if any(build.plugin == name for build in pending):
            raise NameTaken(f"a build of plugin {name!r} is under way already", field="name")
        if len(pending) >= MAX_PENDING:
            raise Unavailable(
                f"{len(pending)} builds are under way or queued already",
                hint="wait for some to finish, or cancel some (DELETE /api/v1/builds/{id})",
            )
        build_id = secrets.token_hex(6)
        build = Build(
            id=build_id,
            image=spec.image,
            plugin=name,
            state=BuildState.RUNNING,
            step="queued",
            started_at=datetime.now(UTC),
        )
        running = _Running(build, spec)
        self._builds[build_id] = running
        self._trim()
        await self._event(EventType.BUILD_STARTED, build)
        running.task = asyncio.create_task(self._run(running), name=f"volant-build-{build_id}")
        log.info("build %s of plugin %s from %s started", build_id, name, spec.image)
        return build

    def list_builds(self) -> list[Build]:
        return [r.build for r in self._builds.values()]

    def get_build(self, build_id: str) -> Build:
        return self._get(build_id).build

    async def cancel_build(self, build_id: str) -> Build:
        """Stop a running build (it ends cancelled, leaving nothing) and forget it; a finished
        build is only forgotten. Its events keep its history. Returns it as it ended."""
        running = self._get(build_id)
        if not running.build.state.is_final and running.task is not None:
            running.cancelled = True
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(running.task)
        self._builds.pop(build_id, None)
        return running.build

    async def wait_build(self, build_id: str) -> Build:
        """The build once it has finished."""
        running = self._get(build_id)
        if running.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(running.task)
        return running.build

    async def repair(self) -> int:
        """Kill every build worker and remove every work directory an earlier daemon left (a
        build never survives a restart), each logged and recorded as a HOST_REPAIRED event;
        return how many resources went."""
        try:
            live = await self.runner.scan()
        except (VolantError, OSError) as exc:
            log.warning("cannot scan the host for build workers: %s", exc)
            live = set()
        records = await self.store.list_resources()
        units = live | {r.name for r in records if r.kind is ResourceKind.BUILD_UNIT}
        dirs = {r.name for r in records if r.kind is ResourceKind.BUILD_DIR}
        found = await asyncio.to_thread(_entries, self.paths.builds_root)
        removed = 0
        work: list[tuple[ResourceKind, str, HostChange, bool]] = [
            *((ResourceKind.BUILD_UNIT, b, self._stopper(b), b in live) for b in sorted(units)),
            *(
                (ResourceKind.BUILD_DIR, p, functools.partial(_rmtree, p), p in found)
                for p in sorted(dirs | found)
            ),
        ]
        for kind, name, destroy, existed in work:
            try:
                await self.ledger.remove(kind, name, destroy)
            except (VolantError, OSError) as exc:
                log.error("could not remove %s %s: %s", kind, name, exc)
                continue
            if existed:
                removed += 1
                log.warning("repair: removed %s %s (a build volantd was running ended)", kind, name)
                await self._emit(
                    EventType.HOST_REPAIRED,
                    {"kind": kind.value, "name": name, "action": "removed",
                     "reason": "builds do not survive a volantd restart"},
                )  # fmt: skip
        return removed

    def _stopper(self, build_id: str) -> Callable[[], Awaitable[None]]:
        return functools.partial(self.runner.stop, build_id)

    async def close(self) -> None:
        """Cancel every running build (each cleans up after itself), then the runner."""
        for running in list(self._builds.values()):
            if running.task is not None and not running.task.done():
                running.cancelled = True
                running.task.cancel()
        await asyncio.gather(
            *(r.task for r in self._builds.values() if r.task is not None), return_exceptions=True
        )
        await self.runner.close()

    # -- the build -----------------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        build_id = running.build.id
        try:
            async with self.faults.verb("plugin-build"), self._slots:
                facts = await self._work(running)
                self.faults.at("built")
                text = manifest_text(facts, running.spec, running.build.plugin)
                plugin = await self._install(PluginSource(text=text.encode()), running.spec.replace)
                running.plugin = plugin
                self.faults.at("installed")
            await self._finish(
                running,
                BuildState.SUCCEEDED,
                EventType.BUILD_SUCCEEDED,
                digest=facts.digest,
                cache_hit=facts.cache_hit,
            )
            log.info("build %s installed plugin %s %s", build_id, plugin.name, plugin.version)
        except asyncio.CancelledError:
            await self._finish(running, BuildState.CANCELLED, EventType.BUILD_CANCELLED)
            log.info("build %s cancelled", build_id)
            if not running.cancelled:
                raise
        except Exception as exc:
            error = exc if isinstance(exc, VolantError) else InternalError(str(exc))
            if not isinstance(exc, VolantError):
                log.exception("build %s failed", build_id)
            await self._finish(
                running,
                BuildState.FAILED,
                EventType.BUILD_FAILED,
                error_code=error.code.value,
                error=error.message,
            )
            log.warning("build %s failed: %s", build_id, error.message)

    async def _work(self, running: _Running) -> ImageFacts:
        """Run the worker in its directory and return what it reports; both go afterwards."""
        build_id = running.build.id
        work = self.paths.work_dir(build_id)
        kind_dir, kind_unit = ResourceKind.BUILD_DIR, ResourceKind.BUILD_UNIT
        # The worker's unit can only write where it is told, and only to what exists already.
        await asyncio.to_thread(self.paths.cache_dir.mkdir, parents=True, exist_ok=True)
        await self.ledger.make("", kind_dir, str(work), lambda: _mkdir(work), lambda: _rmtree(work))
        try:
            self.faults.at("dir-made")
            progress = work / "progress.jsonl"
            argv = self._argv(running.build.image, work, progress)
            await self.ledger.make(
                "",
                kind_unit,
                build_id,
                lambda: self.runner.start(
                    build_id,
                    argv,
                    log_path=work / "worker.log",
                    writable=(self.paths.cache_dir, work),
                ),
                lambda: self.runner.stop(build_id),
            )
            try:
                self.faults.at("launched")
                return await follow_worker(
                    self.runner, build_id, progress, functools.partial(self._progress, running)
                )
            finally:
                await asyncio.shield(
                    self.ledger.remove(kind_unit, build_id, lambda: self.runner.stop(build_id))
                )
        finally:
            await asyncio.shield(self.ledger.remove(kind_dir, str(work), lambda: _rmtree(work)))

    def _argv(self, image: str, work: Path, progress: Path) -> list[str]:
        argv = [*self._worker, "--image", image, "--cache", str(self.paths.cache_dir)]
        argv += ["--out", str(work / "rootfs.erofs"), "--work", str(work)]
        argv += ["--progress", str(progress)]
        if self.paths.authfile is not None:
            argv += ["--authfile", str(self.paths.authfile)]
        if self.paths.cert_dir is not None:
            argv += ["--cert-dir", str(self.paths.cert_dir)]
        return argv

    async def _progress(self, running: _Running, record: dict[str, Any]) -> None:
        step, fraction = str(record.get("step", "")), float(record.get("fraction", 0.0))
        running.build = replace(running.build, step=step, fraction=fraction)
        await self._event(EventType.BUILD_PROGRESS, running.build, detail=record.get("detail", ""))

    async def _finish(
        self, running: _Running, state: BuildState, event: EventType, **fields: Any
    ) -> None:
        running.build = replace(running.build, state=state, finished_at=datetime.now(UTC), **fields)
        await asyncio.shield(self._event(event, running.build))

    async def _event(self, event: EventType, build: Build, **extra: Any) -> None:
        payload = {
            "build": build.id,
            "image": build.image,
            "plugin": build.plugin,
            "state": build.state.value,
            "step": build.step,
            "fraction": build.fraction,
        }
        if build.state is BuildState.SUCCEEDED:
            payload |= {"digest": build.digest, "cache_hit": build.cache_hit}
        if build.state is BuildState.FAILED:
            payload |= {"code": build.error_code, "reason": build.error}
        await self._emit(event, payload | extra)

    def _get(self, build_id: str) -> _Running:
        running = self._builds.get(build_id)
        if running is None:
            raise NotFound(f"no build {build_id!r}", field="build")
        return running

    def _trim(self) -> None:
        finished = [k for k, r in self._builds.items() if r.build.state.is_final]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._builds[key]


def _entries(root: Path) -> set[str]:
    return {str(p) for p in root.iterdir()} if root.is_dir() else set()


async def _mkdir(path: Path) -> None:
    await asyncio.to_thread(path.mkdir, parents=True, mode=0o700)


async def _rmtree(path: str | Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
