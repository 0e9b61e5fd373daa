"""Host networking: the bridge, per-VM taps (pyroute2) and the names and MACs they use."""

from volant.network.host import (
    DEFAULT_ADDRESS,
    DEFAULT_BRIDGE,
    BridgeState,
    HostNetwork,
    forwarding_enabled,
)
from volant.network.names import mac_for, tap_name

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_BRIDGE",
    "BridgeState",
    "HostNetwork",
    "forwarding_enabled",
    "mac_for",
    "tap_name",
]
