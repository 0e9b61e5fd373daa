"""Host networking: the bridge, per-VM taps (pyroute2) and the names and MACs they use."""

from volant.network.firewall import bridge_table_text, warn_without_bridge_table
from volant.network.host import (
    DEFAULT_ADDRESS,
    DEFAULT_BRIDGE,
    ISOLATED_GROUP,
    BridgeState,
    HostNetwork,
    forwarding_enabled,
)
from volant.network.names import mac_for, tap_name
from volant.network.ports import PortRules

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_BRIDGE",
    "ISOLATED_GROUP",
    "BridgeState",
    "HostNetwork",
    "PortRules",
    "bridge_table_text",
    "forwarding_enabled",
    "mac_for",
    "tap_name",
    "warn_without_bridge_table",
]
