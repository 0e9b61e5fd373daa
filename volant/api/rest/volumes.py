"""REST routes of volumes: list, get, create, resize (grow only), delete."""

from __future__ import annotations

from aiohttp import web

from volant.auth.polkit import Action

from . import replies as r
from .common import engine_of, read_json
from .peer import authorize
from .schemas import CreateVolumeRequest, ResizeVolumeRequest, parse_body
from .spec import Api, Body

VOLUMES = "/api/v1/volumes"
VOLUME = "/api/v1/volumes/{volume}"
TAG = "volumes"


async def list_volumes(request: web.Request) -> web.Response:
    volumes = await engine_of(request).volumes.list_volumes()
    return web.json_response({"volumes": [v.to_dict() for v in volumes], "total": len(volumes)})


async def get_volume(request: web.Request) -> web.Response:
    volume = await engine_of(request).volumes.get_volume(request.match_info["volume"])
    return web.json_response(volume.to_dict())


async def create_volume(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_VMS)
    body = parse_body(CreateVolumeRequest, await read_json(request))
    volume = await engine_of(request).volumes.create_volume(body.name, body.size)
    return web.json_response(volume.to_dict(), status=201)


async def resize_volume(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_VMS)
    body = parse_body(ResizeVolumeRequest, await read_json(request))
    name = request.match_info["volume"]
    volume = await engine_of(request).volumes.resize_volume(name, body.size)
    return web.json_response(volume.to_dict())


async def delete_volume(request: web.Request) -> web.Response:
    await authorize(request, Action.MANAGE_VMS)
    await engine_of(request).volumes.delete_volume(request.match_info["volume"])
    return web.Response(status=204)


def add_routes(api: Api) -> None:
    volume = Body(r.Volume)
    api.add(
        "GET",
        VOLUMES,
        list_volumes,
        summary="List volumes",
        tag=TAG,
        ok={200: ("Every volume", Body(r.VolumeList))},
    )
    api.add(
        "POST",
        VOLUMES,
        create_volume,
        summary="Create a volume (a sparse file, formatted ext4 at its first use)",
        tag=TAG,
        body=CreateVolumeRequest,
        ok={201: ("Created", volume)},
        errors=(400, 409, 507),
    )
    api.add(
        "GET",
        VOLUME,
        get_volume,
        summary="Get a volume and the VMs it is attached to",
        tag=TAG,
        ok={200: ("The volume", volume)},
        errors=(400, 404),
    )
    api.add(
        "POST",
        f"{VOLUME}/resize",
        resize_volume,
        summary="Grow a volume that no running VM uses",
        tag=TAG,
        body=ResizeVolumeRequest,
        ok={200: ("The volume after the change", volume)},
        errors=(400, 404, 409, 500, 507),
    )
    api.add(
        "DELETE",
        VOLUME,
        delete_volume,
        summary="Delete a volume no VM is attached to",
        tag=TAG,
        ok={204: ("Deleted", None)},
        errors=(400, 404, 409, 507),
    )
