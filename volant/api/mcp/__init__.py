"""The MCP front-end (Model Context Protocol, Streamable HTTP) for AI agents."""

from volant.api.mcp.server import MEDIA, METHODS, PATH, McpEndpoint

__all__ = ["MEDIA", "METHODS", "PATH", "McpEndpoint"]
