"""Files in and out of a VM's workload root, streamed through its agent (`GET`/`PUT /v1/files`).

The agent does the file system work in a child chrooted into the workload's root (see
agent/volant_agent/filework.py), so paths, symlinks and tar members stay inside it. Here: the VM
must run, the path must be absolute, and no more than vm.files_max_mb goes either way (TooLarge,
413, naming the setting). Both directions are management: reading can expose the workload's
secrets, writing can change what it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

from volant.config import Config
from volant.engine.agentports import Guest
from volant.engine.guest import agent_endpoint
from volant.engine.ports import Store
from volant.model import (
    InsufficientStorage,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unavailable,
    VolantError,
)
from volant.model.validate import validate_name

log = logging.getLogger("volant.engine.engine")

TAR = "application/x-tar"
# A guest that sends or takes nothing for this long has gone away.
IDLE = 60.0
# Percent-encoded (up to 12 characters for one), a path this long still fits aiohttp's 8 KiB
# request line on the way in and the agent's 16 KiB request head on the way on.
MAX_PATH = 512


@dataclass(frozen=True)
class FileOut:
    """A file's bytes (kind "file") or a tar of a directory (kind "dir"), as they come."""

    kind: str
    content_type: str
    mode: int
    chunks: AsyncIterator[bytes]
    size: int | None = None
    mtime: float | None = None


@dataclass(frozen=True)
class FileIn:
    """What to write: a file's bytes, or a tar (docker cp's placement) when tar is set."""

    path: str
    tar: bool = False
    user: str = ""
    mode: int | None = None
    mtime: float | None = None

    def query(self) -> str:
        args = {"path": self.path}
        if self.user:
            args["user"] = self.user
        if self.mode is not None:
            args["mode"] = format(self.mode, "o")
        if self.mtime is not None:
            args["mtime"] = repr(self.mtime)
        return urlencode(args)


def check_path(path: str) -> str:
    """path, when it is absolute and fit to send; InvalidArgument naming `path` otherwise."""
    if not path.startswith("/") or "\0" in path or len(path) > MAX_PATH:
        raise InvalidArgument(
            f"{path[:100]!r} is not an absolute path of at most {MAX_PATH} characters in the "
            "workload's root",
            field="path",
            hint="paths start with '/', the workload's own root",
        )
    return path


def guest_error(status: int, body: bytes, name: str) -> VolantError:
    """The agent's refusal (its JSON {"error"}) as the matching VolantError."""
    try:
        said = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        said = body[:200].decode(errors="replace")
    said = said or f"HTTP {status}"
    kinds: dict[int, type[VolantError]] = {
        400: InvalidArgument,
        403: PermissionDenied,
        404: NotFound,
        409: InvalidState,
        413: TooLarge,
        507: InsufficientStorage,
    }
    kind = kinds.get(status, Unavailable)
    hint = ""
    if status == 403:
        hint = "files are written as the workload's user; `--user root` writes as root"
    elif status == 413:
        hint = "vm.files_max_mb sets the limit"
    return kind(f"VM {name!r}: {said}", hint=hint, field="path" if status == 400 else "")


class Files:
    """Copies files into and out of the roots of running VMs."""

    def __init__(self, config: Config, store: Store, guest: Guest) -> None:
        self.config = config
        self.store = store
        self.guest = guest

    @property
    def limit(self) -> int:
        """The most bytes one copy may carry (vm.files_max_mb)."""
        return self.config.vm_files_max_mb * 1024 * 1024

    def too_large(self, what: str) -> TooLarge:
        return TooLarge(
            f"{what} is larger than vm.files_max_mb ({self.config.vm_files_max_mb} MiB)",
            hint="copy less at once, or raise vm.files_max_mb",
        )

    @contextlib.asynccontextmanager
    async def read(self, name: str, path: str) -> AsyncIterator[FileOut]:
        """The file or directory at path in VM name's root, streamed within the block."""
        vm = await self.store.get_vm(validate_name(name))
        query = urlencode({"path": check_path(path), "limit": str(self.limit)})
        agent = agent_endpoint(vm, self.config)
        log.info("files: reading %s from VM %s", path, vm.name, extra={"VM": vm.name})
        async with self.guest.stream(agent, "GET", f"/v1/files?{query}", idle=IDLE) as reply:
            if reply.status != 200:
                raise guest_error(reply.status, await reply.read(), vm.name)
            headers = {k.lower(): v for k, v in reply.headers.items()}
            kind = "dir" if reply.content_type == TAR else "file"
            size = headers.get("x-volant-file-size")
            mtime = headers.get("x-volant-file-mtime")
            yield FileOut(
                kind=kind,
                content_type=reply.content_type,
                mode=int(headers.get("x-volant-file-mode", "644"), 8),
                chunks=self._bounded(reply.chunks(), path, int(size) if size else None),
                size=int(size) if size is not None else None,
                mtime=float(mtime) if mtime is not None else None,
            )

    async def _bounded(
        self, chunks: AsyncIterator[bytes], path: str, size: int | None
    ) -> AsyncIterator[bytes]:
        """chunks, cut at the limit; a file that ends short of its size is an error, never a
        silently shorter copy."""
        seen = 0
        async for chunk in chunks:
            seen += len(chunk)
            if seen > self.limit:  # it grew while it was sent
                raise self.too_large(path)
            yield chunk
        if size is not None and seen < size:
            raise Unavailable(f"{path} ended after {seen} of its {size} bytes")

    async def write(
        self, name: str, target: FileIn, body: AsyncIterable[bytes], length: int
    ) -> dict[str, object]:
        """Write body (length bytes) at target.path in VM name's root; what the agent did."""
        if length > self.limit:
            raise self.too_large(f"the upload ({length} bytes)")
        vm = await self.store.get_vm(validate_name(name))
        check_path(target.path)
        agent = agent_endpoint(vm, self.config)
        log.info("files: writing %s into VM %s", target.path, vm.name, extra={"VM": vm.name})
        async with self.guest.stream(
            agent,
            "PUT",
            f"/v1/files?{target.query()}",
            body=body,
            length=length,
            content_type=TAR if target.tar else "application/octet-stream",
            idle=IDLE,
        ) as reply:
            data = await reply.read()
        if reply.status != 201:
            raise guest_error(reply.status, data, vm.name)
        done: dict[str, object] = json.loads(data)
        return done

    async def read_bytes(self, name: str, path: str, limit: int) -> bytes:
        """A regular file's bytes, at most limit of them (TooLarge beyond): for MCP."""
        async with self.read(name, path) as out:
            if out.kind != "file":
                raise InvalidArgument(f"{path} is a directory in VM {name!r}", field="path")
            if out.size is not None and out.size > limit:
                raise TooLarge(f"{path} is {out.size} bytes, over the {limit} asked for")
            data = b"".join([chunk async for chunk in out.chunks])
        return data

    async def write_bytes(self, name: str, target: FileIn, data: bytes) -> dict[str, object]:
        """write() of bytes already in memory: for MCP."""

        async def body() -> AsyncIterator[bytes]:
            yield data

        return await self.write(name, target, body(), len(data))
