"""HTTP client for volantd's REST API (used by volar; no daemon internals)."""

from volant.client.http import ApiError, VolantClient

__all__ = ["ApiError", "VolantClient"]
