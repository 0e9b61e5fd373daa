"""The engine: the only code that changes state."""

from volant.engine.console import Console, ConsoleEnd
from volant.engine.engine import Engine
from volant.engine.events import EventBus, Subscription
from volant.engine.faults import STEPS, Faults
from volant.engine.feed import EventFeed, EventFilter
from volant.engine.system import SystemInfo, SystemStatus

__all__ = [
    "Console",
    "ConsoleEnd",
    "Engine",
    "EventBus",
    "EventFeed",
    "EventFilter",
    "Faults",
    "STEPS",
    "Subscription",
    "SystemInfo",
    "SystemStatus",
]
