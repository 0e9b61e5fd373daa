"""A small async client for the REST API, over TCP or the daemon's unix socket."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp

DEFAULT_API = "http://127.0.0.1:7777"


class ApiError(Exception):
    """The daemon answered with a problem+json error, or could not be reached."""

    def __init__(self, status: int, code: str, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.hint = hint


class VolantClient:
    """`base` is http://host:port or unix:/path/to/volantd.sock."""

    def __init__(self, base: str = DEFAULT_API, *, timeout: float = 120.0) -> None:
        self.base = base
        if base.startswith("unix:"):
            self._connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=base[5:])
            self._root = "http://localhost"
        else:
            self._connector = aiohttp.TCPConnector()
            self._root = base.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=self._connector, timeout=aiohttp.ClientTimeout(total=timeout)
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

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        url = self._root + path
        try:
            async with self._session.request(method, url, json=body) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise _problem(resp.status, text)
                return json.loads(text) if text else None
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(
                0,
                "Unreachable",
                f"cannot reach volantd at {self.base}: {exc}",
                hint="is volantd running? (systemctl status volantd) Set --api or VOLANT_API_BASE",
            ) from exc

    async def list_vms(self) -> list[dict[str, Any]]:
        data = await self.request("GET", "/api/v1/vms")
        return list(data["vms"])

    async def get_vm(self, name: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/api/v1/vms/{name}"))

    async def vm_usage(self, name: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/api/v1/vms/{name}/usage"))

    async def create_vm(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.request("POST", "/api/v1/vms", spec))

    async def delete_vm(self, name: str) -> None:
        await self.request("DELETE", f"/api/v1/vms/{name}")

    async def start_vm(self, name: str) -> dict[str, Any]:
        return dict(await self.request("POST", f"/api/v1/vms/{name}/start"))

    async def stop_vm(self, name: str) -> dict[str, Any]:
        return dict(await self.request("POST", f"/api/v1/vms/{name}/stop"))

    async def restart_vm(self, name: str) -> dict[str, Any]:
        return dict(await self.request("POST", f"/api/v1/vms/{name}/restart"))

    async def list_events(self, after: int = 0, vm: str | None = None) -> list[dict[str, Any]]:
        query = f"?after={after}" + (f"&vm={vm}" if vm else "")
        return list((await self.request("GET", f"/api/v1/events{query}"))["events"])

    async def system_status(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/api/v1/system/status"))


def _problem(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return ApiError(status, "HTTPError", f"HTTP {status}: {text.strip()[:200]}")
    return ApiError(
        status,
        str(body.get("code", "HTTPError")),
        str(body.get("detail") or body.get("title") or f"HTTP {status}"),
        str(body.get("hint", "")),
    )
