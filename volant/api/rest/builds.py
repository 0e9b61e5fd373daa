"""REST routes for plugin builds from OCI images: start, list, get, cancel.

A build runs in the background: POST answers 202 with the build at once; its progress comes
as BUILD_* events (GET /api/v1/events?types=BUILD_PROGRESS,…), and GET on the build says where
it is. DELETE cancels it and forgets it; a cancelled or failed build leaves nothing behind.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from volant.auth.polkit import Action
from volant.model.builds import BuildSpec, BuildState
from volant.model.validate import NAME_RE
from volant.plugins.schema import ENV_NAME, HTTP_URL, USER

from .common import engine_of, read_json
from .peer import authorize
from .replies import Reply
from .schemas import Whole, parse_body
from .spec import Api, Body

TAG = "plugins"
BUILD_ID = r"^[0-9a-f]{12}$"
# Documented, not enforced by pydantic (the engine's checks answer in words): what the image
# reference parser and the manifest schema accept, so generated requests stay meaningful.
_C = r"[a-z0-9]+([._-]+[a-z0-9]+)*"
_DOCKER = (
    rf"docker://([A-Za-z0-9.-]+(:[0-9]+)?(/{_C})+|{_C})"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)
_LOCAL = r"(oci|oci-archive|docker-archive):[A-Za-z0-9._/-]*[A-Za-z0-9](:[!-~]*)?"
IMAGE = rf"^({_DOCKER}|{_LOCAL})$"
VERSION = r"^([0-9A-Za-z][0-9A-Za-z.+_-]{0,63})?$"
# An absolute path of printable ASCII: the manifest's `^/\S*$` read the way Python reads \S
# (control characters such as U+001E count as blanks there).
PATH = r"^(/[!-~]*)?$"


def _doc(pattern: str) -> dict[str, Any]:
    return {"pattern": pattern}


_WORDS: dict[str, Any] = {"items": {"type": "string", "minLength": 1}}


class BuildPluginRequest(BaseModel):
    """POST /api/v1/plugins/build. Fields left out keep what the image config says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: StrictStr = Field(
        description="docker://HOST/NAME[:TAG][@DIGEST], oci:DIR[:TAG], oci-archive:FILE or "
        "docker-archive:FILE (paths on the host volantd runs on)",
        json_schema_extra=_doc(IMAGE),
    )
    name: StrictStr = Field(
        "",
        description="Plugin name; default: the image's last path part",
        json_schema_extra=_doc(f"^({NAME_RE.pattern})?$"),
    )
    version: StrictStr = Field(
        "",
        description="Default: the tag, or 12 digits of the digest",
        json_schema_extra=_doc(VERSION),
    )
    replace: StrictBool = Field(False, description="Upgrade an installed plugin of that name")
    entrypoint: list[StrictStr] | None = Field(
        None,
        description="Replaces the image's Entrypoint (and drops its Cmd)",
        json_schema_extra={**_WORDS, "minItems": 1},
    )
    args: list[StrictStr] | None = Field(
        None, description="Replaces the image's Cmd", json_schema_extra=_WORDS
    )
    env: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        description="Merged over Env",
        json_schema_extra={"propertyNames": {"pattern": ENV_NAME}},
    )
    workdir: StrictStr | None = Field(
        None, description="Replaces WorkingDir", json_schema_extra=_doc(PATH)
    )
    user: StrictStr | None = Field(
        None,
        description="Replaces User (name|uid[:group|gid])",
        json_schema_extra=_doc(f"^$|{USER}"),
    )
    workload_type: Literal["", "http", "process"] = Field(
        "", description="Default: http when a health path or base URL is given, else process"
    )
    base_url: StrictStr = Field(
        "",
        description="Default: the first exposed TCP port",
        json_schema_extra=_doc(f"^$|{HTTP_URL}"),
    )
    health_path: StrictStr = Field(
        "",
        description="Health check path of an http workload",
        json_schema_extra=_doc(PATH),
    )
    cpu_cores: Whole = Field(1, ge=1, le=512)
    memory_mb: Whole = Field(512, ge=16, le=4_194_304)


class BuildReply(Reply):
    """A plugin build as volantd tracks it (in memory; gone after a volantd restart)."""

    id: str = Field(description="12 hex digits")
    image: str
    plugin: str = Field(description="The plugin it installs")
    state: BuildState
    step: str = Field(description="queued, pull, build or place")
    fraction: float = Field(description="Rough progress, 0 to 1")
    started_at: str | None
    finished_at: str | None
    digest: str | None = Field(description="The image's manifest digest, once known")
    cache_hit: bool = Field(description="Nothing was fetched or built: all came from the cache")
    error_code: str | None
    error: str | None


class BuildList(Reply):
    builds: list[BuildReply]


async def build_plugin(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    body = parse_body(BuildPluginRequest, await read_json(request))
    values = body.model_dump()
    for key in ("entrypoint", "args"):
        values[key] = None if values[key] is None else tuple(values[key])
    build = await engine_of(request).builds.start_build(BuildSpec(**values))
    return web.json_response(build.to_dict(), status=202)


async def list_builds(request: web.Request) -> web.Response:
    builds = engine_of(request).builds.list_builds()
    return web.json_response({"builds": [b.to_dict() for b in builds]})


async def get_build(request: web.Request) -> web.Response:
    build = engine_of(request).builds.get_build(request.match_info["build"])
    return web.json_response(build.to_dict())


async def cancel_build(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_PLUGINS)
    build = await engine_of(request).builds.cancel_build(request.match_info["build"])
    return web.json_response(build.to_dict())


def add_routes(api: Api) -> None:
    one = "/api/v1/builds/{build}"
    api.add(
        "POST",
        "/api/v1/plugins/build",
        build_plugin,
        summary="Build a plugin from an OCI image (runs in the background)",
        tag=TAG,
        body=BuildPluginRequest,
        ok={202: ("Started; follow BUILD_* events or GET the build", Body(BuildReply))},
        errors=(400, 403, 409, 503),
    )
    api.add(
        "GET",
        "/api/v1/builds",
        list_builds,
        summary="Builds under way and recently finished",
        tag=TAG,
        ok={200: ("The builds", Body(BuildList))},
    )
    api.add(
        "GET",
        one,
        get_build,
        summary="A build's state and progress",
        tag=TAG,
        ok={200: ("The build", Body(BuildReply))},
        errors=(404,),
    )
    api.add(
        "DELETE",
        one,
        cancel_build,
        summary="Cancel a running build (it leaves nothing behind) and forget it; a finished one "
        "is forgotten",
        tag=TAG,
        ok={200: ("The build as it ended; GET answers 404 from now on", Body(BuildReply))},
        errors=(404,),
    )
