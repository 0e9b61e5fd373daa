"""REST routes of the VM lifecycle: list, get, create, delete, start, stop, restart, usage."""

from __future__ import annotations

from aiohttp import web

from volant.model import VMSpec

from . import replies as r
from .common import engine_of, read_json
from .peer import authorize
from .schemas import CreateVMRequest, ListVMsQuery, parse_body, parse_query
from .spec import Api, Body

VMS = "/api/v1/vms"
VM = "/api/v1/vms/{name}"
TAG = "vms"


async def list_vms(request: web.Request) -> web.Response:
    """VMs matching the filters, with the total before limit and offset."""
    query = parse_query(ListVMsQuery, request.query)
    vms, total = await engine_of(request).query_vms(query.to_query())
    return web.json_response(
        {
            "vms": [vm.to_dict() for vm in vms],
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


async def create_vm(request: web.Request) -> web.Response:
    await authorize(request)
    body = parse_body(CreateVMRequest, await read_json(request))
    spec = VMSpec(
        name=body.name,
        plugin=body.plugin,
        cpu_cores=body.cpu_cores,
        memory_mb=body.memory_mb,
        kernel_args=body.kernel_args,
        isolated=body.isolated,
        ephemeral=body.ephemeral,
        volumes=body.volume_mounts(),
        publish=body.port_mappings(),
    )
    vm = await engine_of(request).create_vm(spec)
    return web.json_response(vm.to_dict(), status=201)


async def get_vm(request: web.Request) -> web.Response:
    """The VM, with `usage` {cpu_seconds, memory_bytes, disk_bytes, disk_size_bytes} (null
    where the host cannot tell, or the VM has no disk) and its volumes."""
    engine = engine_of(request)
    vm = await engine.get_vm(request.match_info["name"])
    usage = await engine.vm_usage(vm.name)
    volumes = [v.to_dict() for v in await engine.volumes.vm_volumes(vm.name)]
    return web.json_response({**vm.to_dict(), "usage": usage.to_dict(), "volumes": volumes})


async def vm_usage(request: web.Request) -> web.Response:
    usage = await engine_of(request).vm_usage(request.match_info["name"])
    return web.json_response(usage.to_dict())


async def delete_vm(request: web.Request) -> web.Response:
    await authorize(request)
    await engine_of(request).delete_vm(request.match_info["name"])
    return web.Response(status=204)


async def start_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).start_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


async def stop_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).stop_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


async def restart_vm(request: web.Request) -> web.Response:
    await authorize(request)
    vm = await engine_of(request).restart_vm(request.match_info["name"])
    return web.json_response(vm.to_dict())


def add_routes(api: Api) -> None:
    vm = Body(r.VM)
    api.add(
        "GET",
        VMS,
        list_vms,
        summary="List VMs",
        tag=TAG,
        query=ListVMsQuery,
        ok={200: ("The matching VMs", Body(r.VMList))},
    )
    api.add(
        "POST",
        VMS,
        create_vm,
        summary="Create and start a VM",
        tag=TAG,
        body=CreateVMRequest,
        ok={201: ("Created; follow its status", vm)},
        errors=(400, 404, 409, 502, 503, 507),
    )
    api.add(
        "GET",
        VM,
        get_vm,
        summary="Get a VM and its resource usage",
        tag=TAG,
        ok={200: ("The VM", Body(r.VMWithUsage))},
        errors=(404,),
    )
    api.add(
        "DELETE",
        VM,
        delete_vm,
        summary="Stop a VM and delete it",
        tag=TAG,
        ok={204: ("Deleted", None)},
        errors=(404, 409, 507),
    )
    api.add(
        "GET",
        f"{VM}/usage",
        vm_usage,
        summary="CPU time and memory of a VM",
        tag=TAG,
        ok={200: ("Usage", Body(r.Usage))},
        errors=(404,),
    )
    for verb, handler, text in (
        ("start", start_vm, "Start a stopped VM"),
        ("stop", stop_vm, "Stop a running VM"),
        ("restart", restart_vm, "Stop and start a VM"),
    ):
        api.add(
            "POST",
            f"{VM}/{verb}",
            handler,
            summary=text,
            tag=TAG,
            ok={200: ("The VM after the change", vm)},
            errors=(404, 409, 502, 507),
        )
