"""Host preparation for the system service: what `volar setup` makes and `--undo` removes.

Not a layer of the daemon: it runs once, as root, before volantd is useful, and reads the same
settings volantd will (bridge, subnet, directories) so the two agree.
"""

from volant.setup.plan import SERVICE_DIRS, Action, Change, SetupPlan, host_plan
from volant.setup.record import Record

__all__ = ["SERVICE_DIRS", "Action", "Change", "Record", "SetupPlan", "host_plan"]
