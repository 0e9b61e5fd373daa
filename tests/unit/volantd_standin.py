"""A stand-in for the volantd routes volar's unit tests drive, served on a unix socket from a
thread of its own so that CliRunner can run volar against it synchronously.

It is no fake of the daemon's logic: it plays fixed scripts (a VM that boots, one whose health
gate passes or fails later, one without an event stream) so that volar's side of them is
pinned in milliseconds. tests/integration/test_cli_volar.py drives the real volantd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

IP = "192.168.127.2"
STATUS = {
    "version": "0.1.0",
    "supervisor": "process",
    "hypervisor": "qemu",
    "vms_total": 3,
    "vms_by_status": {"stopped": 1, "running": 2},
    "ip_pool_subnet": "192.168.127.0/24",
    "ip_pool_leased": 3,
    "ip_pool_total": 253,
    "event_subscribers": 1,
    "usage": {"cpu_seconds": 12.34, "memory_bytes": None},
    "host": {
        "cpus": 2,
        "cpu_percent": 14.25,
        "load_average": [0.5, 0.25, 0.125],
        "memory_total_bytes": 4 * 1024**3,
        "memory_available_bytes": 3 * 1024**3 // 2,
        "uptime_seconds": 2 * 86400 + 3 * 3600 + 59,
    },
}
INFO = {
    "version": "0.1.0",
    "api_version": "v1",
    "hostname": "box",
    "kernel": "6.1.0-31-cloud-amd64",
    "supervisor": "process",
    "hypervisor": "qemu",
    "accel": "tcg",
    "state_dir": "/var/lib/volant",
    "bridge": "vbr0",
    "subnet": "192.168.127.0/24",
    "host_ip": "192.168.127.1",
    "plugins_require_signature": False,
    "api_key_required": True,
}
PLUGINS = [{"name": "hello", "version": "0.1.0"}, {"name": "caddy", "version": "2.7.0"}]


def _problem(status: int, code: str, detail: str, hint: str = "") -> web.Response:
    return web.json_response(
        {"code": code, "detail": detail, "hint": hint, "status": status},
        status=status,
        content_type="application/problem+json",
    )


class StandIn:
    """The scripted daemon. Names choose the script: `gated*` VMs pass a health gate 0.2 s
    after the answer, `gated-fail*` fail it, `nostream*` get no event stream, `slow*` take a
    minute to launch, `taken` is a conflict. `posted_while_watched` records, per create,
    whether its VM's events were being watched when the request came."""

    def __init__(self) -> None:
        self.vms: dict[str, dict[str, Any]] = {
            "web": self._vm("web", "running"),
            "db": self._vm("db", "stopped"),
            "late-gated": self._vm("late-gated", "running"),
        }
        self.watchers: dict[str, list[asyncio.Queue[bytes]]] = {}
        self.posted_while_watched: list[bool] = []
        self.event_id = 0
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _vm(name: str, status: str) -> dict[str, Any]:
        return {"name": name, "status": status, "ip_address": IP, "status_reason": "", "pid": 1}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/vms", self.list_vms)
        app.router.add_post("/api/v1/vms", self.create)
        app.router.add_get("/api/v1/vms/{name}", self.get_vm)
        app.router.add_post("/api/v1/vms/{name}/start", self.start)
        app.router.add_post("/api/v1/vms/{name}/restart", self.restart)
        app.router.add_get("/api/v1/events/vms", self.events)
        app.router.add_get("/api/v1/plugins", self.plugins)
        app.router.add_get("/api/v1/system/status", self.status)
        app.router.add_get("/api/v1/system/info", self.info)
        app.on_cleanup.append(self._cancel_tasks)
        return app

    async def _cancel_tasks(self, _app: web.Application) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(STATUS)

    async def info(self, _request: web.Request) -> web.Response:
        return web.json_response(INFO)

    async def list_vms(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        if prefix == "slow":
            await asyncio.sleep(5)
        vms = [vm for name, vm in sorted(self.vms.items()) if name.startswith(prefix)]
        return web.json_response({"vms": vms, "total": len(vms), "limit": None, "offset": 0})

    async def plugins(self, _request: web.Request) -> web.Response:
        return web.json_response({"plugins": PLUGINS, "total": len(PLUGINS)})

    async def get_vm(self, request: web.Request) -> web.Response:
        vm = self.vms.get(request.match_info["name"])
        if vm is None:
            return _problem(404, "NotFound", "no VM named 'x'", "`volar vms list`")
        return web.json_response(vm)

    async def events(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("vm", "")
        if name.startswith("nostream"):
            return web.Response(status=404, text="404: Not Found")
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.watchers.setdefault(name, []).append(queue)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"retry: 2000\nid: {self.event_id}\n\n".encode())
        try:
            while True:
                await response.write(await queue.get())
        finally:
            self.watchers[name].remove(queue)

    def publish(self, kind: str, vm: dict[str, Any], **extra: Any) -> None:
        self.event_id += 1
        payload = {"status": vm["status"], "ip_address": vm["ip_address"], **extra}
        event = {"id": self.event_id, "ts": "", "type": kind, "vm": vm["name"], "payload": payload}
        frame = f"id: {self.event_id}\nevent: {kind}\ndata: {json.dumps(event)}\n\n"
        for queue in self.watchers.get(vm["name"], []):
            queue.put_nowait(frame.encode())

    def _set(self, name: str, status: str, kind: str, **extra: Any) -> dict[str, Any]:
        vm = self.vms[name] = self.vms.get(name, self._vm(name, status)) | {"status": status}
        vm["status_reason"] = extra.get("reason", "")
        self.publish(kind, vm, **extra)
        return vm

    async def create(self, request: web.Request) -> web.Response:
        name = (await request.json())["name"]
        if name == "taken":
            return _problem(409, "AlreadyExists", f"VM {name!r} already exists", "pick another")
        self.posted_while_watched.append(bool(self.watchers.get(name)))
        self._set(name, "creating", "VM_CREATED")
        return await self._launch(name)

    async def start(self, request: web.Request) -> web.Response:
        return await self._launch(request.match_info["name"])

    async def restart(self, request: web.Request) -> web.Response:
        """`late*`: the answer (starting) overtakes the VM_STARTING event."""
        name = request.match_info["name"]
        self._set(name, "stopped", "VM_STOPPED")
        if not name.startswith("late"):
            return await self._launch(name)
        vm = self.vms[name] = self.vms[name] | {"status": "starting"}
        self._spawn(self._late_start(name))
        return web.json_response(vm)

    async def _late_start(self, name: str) -> None:
        await asyncio.sleep(0.1)
        self._set(name, "starting", "VM_STARTING")
        await self._gate(name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _launch(self, name: str) -> web.Response:
        vm = self._set(name, "starting", "VM_STARTING")
        # Long enough that the events reach volar ahead of the answer, even on a busy machine.
        await asyncio.sleep(60 if name.startswith("slow") else 0.2)
        if "gated" not in name:
            return web.json_response(self._set(name, "running", "VM_RUNNING"))
        self._spawn(self._gate(name))
        return web.json_response(vm)

    async def _gate(self, name: str) -> None:
        await asyncio.sleep(0.2)
        if "fail" in name:
            self._set(name, "error", "VM_ERROR", reason="workload never got healthy")
        else:
            self._set(name, "running", "VM_RUNNING")


def not_volantd() -> web.Application:
    """Some other web server at the address volar was given: HTML for the system status, a
    404 page for plugins, JSON of another shape for VMs."""

    async def page(request: web.Request) -> web.Response:
        status = 404 if request.path.startswith("/api/v1/plugins") else 200
        return web.Response(status=status, text="<html>\n hi </html>", content_type="text/html")

    async def odd_json(_request: web.Request) -> web.Response:
        return web.json_response({"unexpected": True})

    app = web.Application()
    app.router.add_get("/api/v1/vms", odd_json)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


@contextlib.contextmanager
def serving(app: web.Application, sock: Path) -> Iterator[str]:
    """app on unix socket sock in a thread of its own; yields volar's --api for it."""
    loop = asyncio.new_event_loop()
    # A client that leaves cancels its handler: an event stream ends with its reader.
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"unix:{sock}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
