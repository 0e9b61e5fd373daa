"""A small async client for the REST API, over TCP or the daemon's unix socket."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import aiohttp

from volant.client.console import ConsoleStream
from volant.client.errors import (
    UNREACHABLE_HINT,
    ApiError,
    bad_response,
    json_object,
    problem,
    unreachable,
)
from volant.client.exec import ExecStream
from volant.client.sse import SSEEvent, SSEParser

__all__ = ["DEFAULT_API", "UNREACHABLE_HINT", "ApiError", "Reply", "VolantClient", "json_object"]

DEFAULT_API = "http://127.0.0.1:7777"
PROBLEM_JSON = "application/problem+json"
API_KEY_HEADER = "X-Volant-API-Key"
WS_HEARTBEAT = 30.0


class Reply(NamedTuple):
    """A workload's answer to an action, passed through by the daemon as it came."""

    status: int
    content_type: str
    body: bytes


def _seg(value: str) -> str:
    """value as one path segment: a name can never climb into another route."""
    return quote(value, safe="")


class VolantClient:
    """`base` is http://host:port or unix:/path/to/volantd.sock."""

    def __init__(
        self, base: str = DEFAULT_API, *, timeout: float = 120.0, api_key: str | None = None
    ) -> None:
        """api_key defaults to $VOLANT_API_KEY; it is sent on every request when set."""
        self.base = base
        self.timeout = timeout
        key = os.environ.get("VOLANT_API_KEY", "") if api_key is None else api_key
        self.headers = {API_KEY_HEADER: key} if key else {}
        if base.startswith("unix:"):
            self._connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=base[5:])
            self._root = "http://localhost"
        else:
            self._connector = aiohttp.TCPConnector()
            self._root = base.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=self.headers,
            middlewares=(_refused_upgrade,),
        )

    async def __aenter__(self) -> VolantClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, *, query: Mapping[str, str] | None = None
    ) -> Any:
        """The decoded JSON answer (None when empty); ApiError for a problem or no daemon."""
        reply = await self.raw(
            method,
            path,
            None if body is None else json.dumps(body).encode(),
            query=query,
        )
        if reply.status >= 400:
            raise problem(reply.status, reply.body.decode(errors="replace"))
        if not reply.body:
            return None
        try:
            return json.loads(reply.body)
        except ValueError:
            kind = reply.content_type or "no content type"
            raise bad_response(self.base, f"{method} {path} answered {kind}, not JSON") from None

    async def request_object(
        self, method: str, path: str, body: Any = None, *, query: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """request() for a route that answers one JSON object."""
        data = await self.request(method, path, body, query=query)
        if not isinstance(data, dict):
            raise bad_response(self.base, f"{method} {path} answered no JSON object")
        return data

    async def request_items(
        self, path: str, key: str, *, query: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The list of objects under key in what GET path answers."""
        items = (await self.request_object("GET", path, query=query)).get(key)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise bad_response(self.base, f"GET {path} answered no {key!r} list")
        return items

    async def raw(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> Reply:
        """The answer as it came, whatever its status; ApiError only when there is none."""
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self._session.request(
                method, self._url(path, query), data=data, headers=headers
            ) as resp:
                return Reply(resp.status, resp.content_type, await resp.read())
        except aiohttp.ClientConnectionError as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise ApiError(
                0,
                "Timeout",
                f"volantd at {self.base} did not answer {method} {path} within {self.timeout:g}s",
                hint="the daemon may be busy; `journalctl -u volantd` shows what it is doing",
            ) from exc

    async def events(
        self,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        last_event_id: str = "",
        parser: SSEParser | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[SSEEvent]:
        """The Server-Sent Events of path until the daemon ends the stream (no time limit).

        last_event_id resumes a stream (the Last-Event-ID header); pass a parser to read its
        `last_event_id` afterwards, the position to resume from. on_open is called once the
        daemon has accepted the stream, before any event: from then on nothing is missed.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            async with self._session.get(
                self._url(path, query), headers=headers, timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    raise problem(resp.status, await resp.text(errors="replace"))
                if resp.content_type != "text/event-stream":
                    raise ApiError(
                        resp.status,
                        "BadResponse",
                        f"{path} answered {resp.content_type}, not an event stream",
                    )
                parser = parser or SSEParser()
                if on_open is not None:
                    on_open()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
        except aiohttp.ClientConnectionError as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise self._unreachable(exc) from exc
        except (aiohttp.ClientPayloadError, ValueError) as exc:
            raise ApiError(0, "BadResponse", f"broken event stream from {path}: {exc}") from exc

    def _url(self, path: str, query: Mapping[str, str] | None) -> str:
        return self._root + path + (f"?{urlencode(query)}" if query else "")

    def _unreachable(self, exc: Exception) -> ApiError:
        return unreachable(self.base, exc)

    # VMs

    async def list_vms(self, prefix: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        """VMs by name; only those whose name starts with prefix, at most limit of them."""
        query = ({"prefix": prefix} if prefix else {}) | (
            {"limit": str(limit)} if limit is not None else {}
        )
        return await self.request_items("/api/v1/vms", "vms", query=query or None)

    async def get_vm(self, name: str) -> dict[str, Any]:
        return await self.request_object("GET", f"/api/v1/vms/{_seg(name)}")

    async def vm_usage(self, name: str) -> dict[str, Any]:
        return await self.request_object("GET", f"/api/v1/vms/{_seg(name)}/usage")

    async def create_vm(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self.request_object("POST", "/api/v1/vms", spec)

    async def delete_vm(self, name: str) -> None:
        await self.request("DELETE", f"/api/v1/vms/{_seg(name)}")

    async def start_vm(self, name: str) -> dict[str, Any]:
        return await self.request_object("POST", f"/api/v1/vms/{_seg(name)}/start")

    async def stop_vm(self, name: str) -> dict[str, Any]:
        return await self.request_object("POST", f"/api/v1/vms/{_seg(name)}/stop")

    async def restart_vm(self, name: str) -> dict[str, Any]:
        return await self.request_object("POST", f"/api/v1/vms/{_seg(name)}/restart")

    async def vm_action(
        self,
        name: str,
        action: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        """Run a plugin action on VM name; the workload's answer, whatever its status."""
        path = f"/api/v1/vms/{_seg(name)}/actions/{_seg(action)}"
        return await self._action(path, body, content_type)

    async def vm_openapi(self, name: str) -> str:
        """The OpenAPI document of the VM's plugin, as text (JSON or YAML)."""
        reply = await self.raw("GET", f"/api/v1/vms/{_seg(name)}/openapi")
        if reply.status >= 400:
            raise problem(reply.status, reply.body.decode(errors="replace"))
        return reply.body.decode(errors="replace")

    async def vm_logs(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Recent workload output lines: dicts with seq, ts, stream and line."""
        query = {"limit": str(limit)} if limit is not None else None
        return await self.request_items(f"/api/v1/vms/{_seg(name)}/logs", "lines", query=query)

    async def follow_vm_logs(
        self, name: str, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Workload output lines as they come, until the daemon ends the stream."""
        query = {"follow": "true"} | ({"limit": str(limit)} if limit is not None else {})
        async for event in self.events(f"/api/v1/vms/{_seg(name)}/logs", query=query):
            yield json_object(event.data, "log line")

    async def console_log(self, name: str, lines: int | None = None) -> bytes:
        """The last lines VM name printed on its serial console (UTF-8 text)."""
        query = {"lines": str(lines)} if lines is not None else None
        reply = await self.raw("GET", f"/api/v1/vms/{_seg(name)}/console/log", query=query)
        if reply.status >= 400:
            raise problem(reply.status, reply.body.decode(errors="replace"))
        return reply.body

    @contextlib.asynccontextmanager
    async def console(self, name: str, *, force: bool = False) -> AsyncIterator[ConsoleStream]:
        """VM name's serial console, attached for the block; ApiError (409) when the VM does
        not run or another client is attached (unless force, which takes it over)."""
        url = self._url(f"/ws/v1/vms/{_seg(name)}/console", {"force": "true"} if force else None)
        try:
            ws = await self._session.ws_connect(
                url, heartbeat=WS_HEARTBEAT, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(exc.status, "BadResponse", f"console WebSocket: {exc.message}") from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        try:
            yield ConsoleStream(ws)
        finally:
            await ws.close()

    @contextlib.asynccontextmanager
    async def exec(self, name: str, command: dict[str, Any]) -> AsyncIterator[ExecStream]:
        """Command (argv, env, workdir, user, timeout, tty, rows, cols) started in VM name for
        the block; leaving the block early kills it. ApiError when it cannot start."""
        try:
            ws = await self._session.ws_connect(
                self._url(f"/ws/v1/vms/{_seg(name)}/exec", None),
                heartbeat=WS_HEARTBEAT,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(exc.status, "BadResponse", f"exec WebSocket: {exc.message}") from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        try:
            stream = ExecStream(ws)
            await stream.start(command)
            yield stream
        finally:
            await ws.close()

    # Plugins

    async def list_plugins(self) -> list[dict[str, Any]]:
        return await self.request_items("/api/v1/plugins", "plugins")

    async def get_plugin(self, name: str) -> dict[str, Any]:
        """The installed plugin, with its manifest under "manifest"."""
        return await self.request_object("GET", f"/api/v1/plugins/{_seg(name)}")

    async def plugin_manifest(self, name: str) -> dict[str, Any]:
        return await self.request_object("GET", f"/api/v1/plugins/{_seg(name)}/manifest")

    async def plugin_schema(self) -> dict[str, Any]:
        """The JSON Schema every manifest is validated against."""
        return await self.request_object("GET", "/api/v1/plugins/schema")

    async def install_plugin(
        self,
        *,
        manifest_text: str | None = None,
        url: str | None = None,
        signature: str | None = None,
        origin: str | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Install from the manifest's text (origin: its file:// URL) or from a URL.

        signature is the detached base64 signature over the manifest's exact bytes; the daemon
        looks for `<url>.sig` itself when a URL install comes without one.
        """
        if (manifest_text is None) == (url is None):
            raise ValueError("give exactly one of manifest_text and url")
        body: dict[str, Any] = {"replace": replace}
        if manifest_text is not None:
            body |= {"manifest": manifest_text, "signature": signature, "origin": origin}
        else:
            body["url"] = url
            if signature is not None:
                body["signature"] = signature
        return await self.request_object("POST", "/api/v1/plugins", body)

    async def build_plugin(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Start building a plugin from an OCI image (POST /api/v1/plugins/build); the build,
        running. spec holds image and any overrides (see BuildPluginRequest)."""
        return await self.request_object("POST", "/api/v1/plugins/build", dict(spec))

    async def get_build(self, build_id: str) -> dict[str, Any]:
        return await self.request_object("GET", f"/api/v1/builds/{_seg(build_id)}")

    async def list_builds(self) -> list[dict[str, Any]]:
        return await self.request_items("/api/v1/builds", "builds")

    async def cancel_build(self, build_id: str) -> dict[str, Any]:
        """Cancel a build; it ends cancelled and leaves nothing behind."""
        return await self.request_object("DELETE", f"/api/v1/builds/{_seg(build_id)}")

    async def enable_plugin(self, name: str) -> dict[str, Any]:
        return await self.request_object("POST", f"/api/v1/plugins/{_seg(name)}/enable")

    async def disable_plugin(self, name: str) -> dict[str, Any]:
        return await self.request_object("POST", f"/api/v1/plugins/{_seg(name)}/disable")

    async def remove_plugin(self, name: str) -> None:
        """Remove the plugin; ApiError (409 Conflict) while VMs use it."""
        await self.request("DELETE", f"/api/v1/plugins/{_seg(name)}")

    async def plugin_action(
        self,
        plugin: str,
        action: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        """Run an action on the plugin's VM (the daemon picks it); the workload's answer."""
        path = f"/api/v1/plugins/{_seg(plugin)}/actions/{_seg(action)}"
        return await self._action(path, body, content_type)

    async def _action(self, path: str, body: bytes | None, content_type: str) -> Reply:
        reply = await self.raw("POST", path, body, content_type=content_type)
        # The workload's own errors pass through as they are; problem+json is the daemon's.
        if reply.status >= 400 and reply.content_type == PROBLEM_JSON:
            raise problem(reply.status, reply.body.decode(errors="replace"))
        return reply

    # Volumes

    async def list_volumes(self) -> list[dict[str, Any]]:
        return await self.request_items("/api/v1/volumes", "volumes")

    async def get_volume(self, name: str) -> dict[str, Any]:
        """The volume, with the VMs it is attached to under "attachments"."""
        return await self.request_object("GET", f"/api/v1/volumes/{_seg(name)}")

    async def create_volume(self, name: str, size: int | str) -> dict[str, Any]:
        """size: bytes, or a text such as "1G"."""
        return await self.request_object("POST", "/api/v1/volumes", {"name": name, "size": size})

    async def resize_volume(self, name: str, size: int | str) -> dict[str, Any]:
        """Grow the volume; ApiError (400 smaller, 409 while a VM runs with it)."""
        path = f"/api/v1/volumes/{_seg(name)}/resize"
        return await self.request_object("POST", path, {"size": size})

    async def delete_volume(self, name: str) -> None:
        """Delete the volume; ApiError (409 Conflict) while a VM has it attached."""
        await self.request("DELETE", f"/api/v1/volumes/{_seg(name)}")

    # Events and status

    async def list_events(
        self,
        after: int = 0,
        vm: str | None = None,
        types: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Persisted events after id `after`, oldest first (at most limit, or the daemon's
        default); of one VM and some types if given."""
        query = {"after": str(after)} | event_filters(vm, types)
        if limit is not None:
            query["limit"] = str(limit)
        return await self.request_items("/api/v1/events", "events", query=query)

    async def system_status(self) -> dict[str, Any]:
        """VMs by status, summed usage, the IP pool and the host's load."""
        return await self.request_object("GET", "/api/v1/system/status")

    async def system_info(self) -> dict[str, Any]:
        """Version, host, hypervisor, network and policies."""
        return await self.request_object("GET", "/api/v1/system/info")


async def _refused_upgrade(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A WebSocket the daemon refused: raise its problem+json, which ws_connect would drop."""
    response = await handler(request)
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if upgrade and response.status >= 400:
        raise problem(response.status, await response.text(errors="replace"))
    return response


def event_filters(vm: str | None, types: Sequence[str]) -> dict[str, str]:
    """?vm= and ?type= (comma-separated) of the event routes."""
    return ({"vm": vm} if vm else {}) | ({"type": ",".join(types)} if types else {})
