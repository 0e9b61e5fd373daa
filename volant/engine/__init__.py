"""The engine: the only code that changes state."""

from volant.engine.engine import Engine
from volant.engine.events import EventBus, Subscription
from volant.engine.system import SystemInfo, SystemStatus

__all__ = ["Engine", "EventBus", "Subscription", "SystemInfo", "SystemStatus"]
