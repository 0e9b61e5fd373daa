"""MCP resources: the manifest of every installed plugin, as JSON."""

from __future__ import annotations

import re

from mcp import types
from mcp.shared.exceptions import MCPError

from volant.engine import Engine
from volant.model import NotFound
from volant.model.validate import NAME_RE

JSON = "application/json"
TEMPLATE = "volant://plugins/{name}/manifest"
URI_RE = re.compile(rf"volant://plugins/(?P<name>{NAME_RE.pattern})/manifest")
# The MCP specification's code for a resource that does not exist.
RESOURCE_NOT_FOUND = -32002


def manifest_uri(name: str) -> str:
    return TEMPLATE.format(name=name)


async def list_manifests(engine: Engine) -> types.ListResourcesResult:
    plugins = await engine.list_plugins()
    return types.ListResourcesResult(
        resources=[
            types.Resource(
                uri=manifest_uri(plugin.name),
                name=f"{plugin.name}-manifest",
                title=f"Manifest of plugin {plugin.name} {plugin.version}",
                description="What a VM of this plugin runs: workload, resources, network, "
                "actions" + ("" if plugin.enabled else " (plugin disabled)"),
                mime_type=JSON,
                size=len(plugin.manifest_json.encode()),
            )
            for plugin in plugins
        ]
    )


def templates() -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(
        resource_templates=[
            types.ResourceTemplate(
                uri_template=TEMPLATE,
                name="plugin-manifest",
                title="Manifest of an installed plugin",
                mime_type=JSON,
            )
        ]
    )


async def read_manifest(engine: Engine, uri: str) -> types.ReadResourceResult:
    """The manifest behind a resource URI; an unknown one is the protocol's not-found error."""
    match = URI_RE.fullmatch(uri)
    if match is None:
        raise MCPError(RESOURCE_NOT_FOUND, f"no such resource: {uri}", {"uri": uri})
    try:
        plugin = await engine.get_plugin(match["name"])
    except NotFound as exc:
        raise MCPError(RESOURCE_NOT_FOUND, exc.message, {"uri": uri}) from exc
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=uri, mime_type=JSON, text=plugin.manifest_json)]
    )
