"""The agent's HTTP routes: health, status, logs, power-off and the manifest's actions.

Every route but `GET /healthz` needs the VM's agent secret in the X-Volant-Agent-Secret header
(volantd made it at create and handed it over on the config disk): another guest on the bridge
must not power this one off, read its logs or drive its workload. Without the secret /healthz
answers only ok or degraded.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from volant_agent import __version__
from volant_agent.exec import exec_route
from volant_agent.files import get_files, put_files
from volant_agent.http import (
    HOP_BY_HOP,
    Handler,
    HTTPError,
    Request,
    Response,
    error_response,
    fetch,
    json_response,
)
from volant_agent.logs import LogBuffer
from volant_agent.manifest import Action, Manifest
from volant_agent.passthrough import passthrough, streams_body
from volant_agent.workload import Health, Supervisor

SSE_KEEPALIVE = 15.0
SECRET_HEADER = "x-volant-agent-secret"  # noqa: S105 - a header name, not a secret


def rss_kib(status: str = "/proc/self/status") -> int | None:
    """The agent's resident set size in KiB (VmRSS), when /proc says it."""
    try:
        with open(status) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class Agent:
    """Everything the routes read; main() builds it."""

    manifest: Manifest | None
    source: str
    logs: LogBuffer
    supervisor: Supervisor | None
    request_poweroff: Callable[[], None]
    # None when no config disk carried one: then every route but /healthz refuses.
    secret: str | None = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic)
    # Seconds since boot (CLOCK_MONOTONIC) of start-up milestones, for /v1/status.
    timeline: dict[str, float | None] = field(default_factory=dict)
    # An initramfs plugin's root for /v1/files, without the agent's files (volant_agent.view).
    files_root: Path | None = None
    # The workload's root and user are set up (or failed): exec may run commands in it.
    workload_prepared: bool = False

    def health(self) -> Health:
        return self.supervisor.health if self.supervisor is not None else Health.NONE

    def action_routes(self) -> dict[tuple[str, str], Action]:
        if self.manifest is None:
            return {}
        return {(a.method, "/v1" + a.path): a for a in self.manifest.actions}

    def authorized(self, request: Request) -> bool:
        """True when request carries this VM's secret (compared in constant time)."""
        given = request.headers.get(SECRET_HEADER)
        if self.secret is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self.secret.encode())


def healthz(agent: Agent, authorized: bool) -> Response:
    """ok (200) or degraded (503); the workload's state only for the host (with the secret)."""
    health = agent.health()
    ok = health in (Health.HEALTHY, Health.NONE)
    payload = {"status": "ok" if ok else "degraded"}
    if authorized:
        payload |= {"agent": "ok", "workload": health.value}
        if health is Health.FAILED and agent.supervisor is not None:
            payload["error"] = agent.supervisor.error or "unknown"
    return json_response(payload, 200 if ok else 503)


async def status(agent: Agent, _request: Request) -> Response:
    manifest = agent.manifest
    return json_response(
        {
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "uptime": round(time.monotonic() - agent.started, 3),
                "rss_kib": rss_kib(),
            },
            "manifest": {
                "name": manifest.name if manifest else None,
                "version": manifest.version if manifest else None,
                "source": agent.source,
                "actions": sorted(a.name for a in manifest.actions) if manifest else [],
            },
            "workload": agent.supervisor.status() if agent.supervisor else None,
            "health": agent.health().value,
            "timeline": {
                **agent.timeline,
                "workload_healthy": agent.supervisor.first_healthy if agent.supervisor else None,
            },
        }
    )


def _limit(request: Request, default: int) -> int:
    values = parse_qs(request.query).get("limit")
    try:
        return max(0, min(int(values[0]), 10_000)) if values else default
    except ValueError as exc:
        raise HTTPError(400, "limit must be an integer") from exc


async def logs(agent: Agent, request: Request) -> Response:
    lines = agent.logs.recent(_limit(request, 200))
    return json_response({"lines": [line.as_dict() for line in lines]})


async def logs_stream(agent: Agent, request: Request) -> Response:
    backlog = _limit(request, 50)

    async def stream(writer: asyncio.StreamWriter) -> None:
        follow = agent.logs.follow(backlog)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(anext(follow), SSE_KEEPALIVE)
                except TimeoutError:
                    # A comment line: keeps proxies from timing out and notices a gone client.
                    writer.write(b": keepalive\n\n")
                else:
                    data = json.dumps(line.as_dict(), sort_keys=True)
                    writer.write(f"id: {line.seq}\nevent: log\ndata: {data}\n\n".encode())
                await writer.drain()
        finally:
            await follow.aclose()

    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    return Response(200, headers=headers, stream=stream)


async def poweroff(agent: Agent, _request: Request) -> Response:
    # Answer first, then ask init: the power-off tears the network down under us.
    asyncio.get_running_loop().call_later(0.2, agent.request_poweroff)
    return json_response({"status": "powering off"}, 202)


async def kill_workload(agent: Agent, request: Request) -> Response:
    """Signal the workload (default SIGKILL): a crash on request, to exercise restarts."""
    if agent.supervisor is None:
        return error_response(404, "no workload")
    name = parse_qs(request.query).get("signal", ["KILL"])[0].upper().removeprefix("SIG")
    try:
        sig = signal.Signals[f"SIG{name}"]
    except KeyError as exc:
        raise HTTPError(400, f"unknown signal {name}") from exc
    pid = agent.supervisor.pid
    if not agent.supervisor.kill(sig):
        return error_response(409, "the workload is not running")
    return json_response({"signalled": pid, "signal": sig.name}, 202)


async def proxy(agent: Agent, request: Request, path: str, timeout_ms: int) -> Response:
    """Forward request to the workload's base_url + path; 502 when it does not answer."""
    workload = agent.manifest.workload if agent.manifest else None
    if workload is None or not workload.base_url:
        return error_response(404, "the manifest declares no workload base_url")
    url = workload.base_url.rstrip("/") + path + (f"?{request.query}" if request.query else "")
    # The secret is the host's word to this agent, never the workload's business.
    headers = {
        k: v for k, v in request.headers.items() if k not in HOP_BY_HOP and k != SECRET_HEADER
    }
    try:
        resp = await fetch(
            request.method, url, body=request.body, headers=headers, timeout=timeout_ms / 1000
        )
    except TimeoutError:
        return error_response(504, "the workload did not answer in time")
    except (OSError, ValueError) as exc:
        return error_response(502, f"the workload is unreachable: {exc}")
    out = {k: v for k, v in resp.headers.items() if k not in HOP_BY_HOP}
    return Response(resp.status, resp.body, out)


async def exec_command(agent: Agent, request: Request) -> Response:
    return await exec_route(agent.supervisor, agent.workload_prepared, request)


ROUTES = {
    ("GET", "/v1/status"): status,
    ("GET", "/v1/logs"): logs,
    ("GET", "/v1/logs/stream"): logs_stream,
    ("POST", "/v1/poweroff"): poweroff,
    ("POST", "/v1/workload/kill"): kill_workload,
    ("GET", "/v1/files"): get_files,
    ("PUT", "/v1/files"): put_files,
    ("POST", "/v1/exec"): exec_command,
}


def make_handler(agent: Agent) -> Handler:
    """The request handler: /healthz for anyone; with the secret, the streaming passthrough
    (/v1/proxy/*), fixed routes, then the manifest's actions, then /v1/* passthrough."""
    routes = _routes(agent)

    async def handle(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        authorized = agent.authorized(request)
        if (method, request.path) == ("GET", "/healthz"):
            return healthz(agent, authorized)
        if not authorized:
            # The same answer for a missing and a wrong secret, whatever the route.
            return error_response(401, "unauthorized")
        if streams_body(request.path):  # the workload's own endpoints (passthrough.py)
            workload = agent.manifest.workload if agent.manifest else None
            return await passthrough(workload.base_url if workload else None, request)
        return await routes(method, request)

    return handle


def _routes(agent: Agent) -> Callable[[str, Request], Awaitable[Response]]:
    actions = agent.action_routes()
    named = {a.name: a for a in actions.values()}

    async def dispatch(method: str, request: Request) -> Response:
        route = ROUTES.get((method, request.path))
        if route is not None:
            return await route(agent, request)
        action = actions.get((request.method, request.path))
        if action is not None:
            return await proxy(agent, request, action.path, action.timeout_ms)
        # /v1/actions/<name> reaches an action by name, whatever its method and path.
        if request.path.startswith("/v1/actions/"):
            by_name = named.get(request.path.removeprefix("/v1/actions/"))
            if by_name is None:
                return error_response(404, "no such action")
            return await proxy(agent, request, by_name.path, by_name.timeout_ms)
        if request.path.startswith("/v1/"):
            # As the Go agent did: any other /v1/* goes to the workload with /v1 stripped.
            return await proxy(agent, request, request.path[3:], 30_000)
        return error_response(404, "not found")

    return dispatch
