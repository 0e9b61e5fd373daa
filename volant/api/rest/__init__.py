"""REST API (aiohttp): thin adapters from HTTP onto engine verbs."""

from volant.api.rest.app import make_app
from volant.api.rest.common import ENGINE
from volant.api.rest.mount import Mount
from volant.api.rest.server import RestServer

__all__ = ["ENGINE", "Mount", "RestServer", "make_app"]
