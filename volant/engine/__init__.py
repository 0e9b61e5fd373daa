"""The engine: the only code that changes state."""

from volant.engine.engine import Engine, SystemStatus
from volant.engine.events import EventBus, Subscription

__all__ = ["Engine", "EventBus", "Subscription", "SystemStatus"]
