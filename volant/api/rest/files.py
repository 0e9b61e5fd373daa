"""REST routes of files in a VM's workload root: GET and PUT /api/v1/vms/{name}/files?path=.

Both stream: a file's bytes or a directory's tar come out as the agent sends them, and an
upload goes into the guest as it arrives (an upload without Content-Length is spooled to a
temporary file first: the agent needs the length ahead). Both need manage-vms (polkit over the
unix socket, the API key over TCP): reading may expose the workload's secrets.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from volant.auth.polkit import Action
from volant.engine.files import MAX_PATH, TAR, FileIn, Files

from .common import engine_of
from .peer import authorize
from .schemas import parse_query
from .spec import Api, Body

FILES = "/api/v1/vms/{name}/files"
TAG = "vms"
BLOCK = 1 << 16
OCTETS = "application/octet-stream"
PATH_DOC = "Absolute path in the workload's root (its symlinks and `..` stay inside it)"


class ReadFileQuery(BaseModel):
    """GET /api/v1/vms/{name}/files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=MAX_PATH, description=PATH_DOC)


class WriteFileQuery(BaseModel):
    """PUT /api/v1/vms/{name}/files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=MAX_PATH, description=PATH_DOC)
    user: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Who writes and owns what is written: a user (or uid[:gid]) of the image; "
        "default: the workload's user",
    )
    mode: str | None = Field(
        None, pattern="^[0-7]{3,4}$", description="A file's permission bits, in octal"
    )
    mtime: float | None = Field(None, ge=0, description="A file's modification time (seconds)")


class FilesWritten(BaseModel):
    """What a PUT wrote."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Where it was written in the workload's root")
    entries: int = Field(description="Files, directories and links written")


async def get_files(request: web.Request) -> web.StreamResponse:
    await authorize(request, Action.MANAGE_VMS)
    query = parse_query(ReadFileQuery, request.query)
    files = engine_of(request).files
    async with files.read(request.match_info["name"], query.path) as out:
        response = web.StreamResponse(headers={"X-Volant-File-Mode": format(out.mode, "04o")})
        response.content_type = out.content_type
        if out.size is not None:
            response.content_length = out.size
        if out.mtime is not None:
            response.headers["X-Volant-File-Mtime"] = repr(out.mtime)
        await response.prepare(request)
        async for chunk in out.chunks:
            await response.write(chunk)
        await response.write_eof()
    return response


async def put_files(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_VMS)
    query = parse_query(WriteFileQuery, request.query)
    files = engine_of(request).files
    target = FileIn(
        path=query.path,
        tar=request.content_type == TAR,
        user=query.user or "",
        mode=int(query.mode, 8) if query.mode is not None else None,
        mtime=query.mtime,
    )
    name = request.match_info["name"]
    if request.content_length is not None:
        body = _counted(request, files, request.content_length)
        done = await files.write(name, target, body, request.content_length)
    else:
        with tempfile.TemporaryFile() as spool:
            length = await _spool(request, files, spool)
            done = await files.write(name, target, _replay(spool), length)
    return web.json_response(FilesWritten.model_validate(done).model_dump(), status=201)


async def _counted(request: web.Request, files: Files, length: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.content.iter_chunked(BLOCK):
        seen += len(chunk)
        if seen > length:
            raise files.too_large("the upload")
        yield chunk


async def _spool(request: web.Request, files: Files, spool: IO[bytes]) -> int:
    """Copy a body of unknown length into spool (no more than the limit); its length."""
    length = 0
    async for chunk in request.content.iter_chunked(BLOCK):
        length += len(chunk)
        if length > files.limit:
            raise files.too_large("the upload")
        await asyncio.to_thread(spool.write, chunk)
    await asyncio.to_thread(spool.seek, 0)
    return length


async def _replay(spool: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(spool.read, BLOCK):
        yield chunk


def add_routes(api: Api) -> None:
    api.add(
        "GET",
        FILES,
        get_files,
        summary="Read a file (its bytes) or a directory (a tar) from a VM's workload root",
        tag=TAG,
        query=ReadFileQuery,
        ok={
            200: (
                "The file's bytes (X-Volant-File-Mode and -Mtime headers), or an uncompressed "
                "tar of the directory, its top entry named after it",
                (
                    Body(media=OCTETS, schema={"type": "string", "format": "binary"}),
                    Body(media=TAR, schema={"type": "string", "format": "binary"}),
                ),
            )
        },
        errors=(400, 404, 409, 413, 502, 503),
        stream=True,
    )
    api.add(
        "PUT",
        FILES,
        put_files,
        summary="Write a file, or unpack a tar (Content-Type application/x-tar), into a VM's "
        "workload root; a tar goes inside path when it is a directory, else its one top-level "
        "entry becomes path",
        tag=TAG,
        query=WriteFileQuery,
        body_media=(OCTETS, TAR),
        ok={201: ("Written", Body(FilesWritten))},
        errors=(400, 404, 409, 413, 502, 503, 507),
        stream=True,
    )
