"""The nftables table `bridge volant`: what the bridge forwards between guests.

`volar setup` writes it (volant/setup/nft.py puts it in the same file as `inet volant`);
volantd only checks at start that it is there as written, and warns when not. The text is the
canonical form `nft list table bridge volant` prints, so drift is a text comparison.

Only frames the bridge forwards from one port to another pass its forward hook: the host's own
traffic to a guest leaves through the bridge device (output), and a guest's traffic to the host
is delivered to it (input), so these rules never stand between the host and a guest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from volant.model import AGENT_PORT
from volant.network.host import ISOLATED_GROUP
from volant.network.names import TAP_PREFIX

log = logging.getLogger(__name__)

TABLE = "volant"


def bridge_table_text() -> str:
    """The table exactly as `nft list table bridge volant` shows it once loaded.

    A guest cannot reach another guest's agent port (the agent also wants the VM's secret; this
    keeps other guests from even trying). A tap in ISOLATED_GROUP (an isolated VM's) neither
    sends to nor receives from any other guest.
    """
    return (
        f"table bridge {TABLE} {{\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f'\t\tiifname "{TAP_PREFIX}*" oifname "{TAP_PREFIX}*" tcp dport {AGENT_PORT} drop\n'
        f"\t\tiifgroup {ISOLATED_GROUP} drop\n"
        f"\t\toifgroup {ISOLATED_GROUP} drop\n"
        "\t}\n"
        "}\n"
    )


@dataclass(frozen=True)
class FilterCheck:
    """What volantd found when it looked for the bridge table: ok, or a warning to log."""

    ok: bool
    problem: str = ""


async def check_bridge_table() -> FilterCheck:
    """Compare `nft list table bridge volant` with bridge_table_text().

    Never raises: a missing nft, missing privileges or a missing table are all a problem to
    report, and the daemon runs on (guests then only have their agent secrets).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            "nft", "list", "table", "bridge", TABLE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        return FilterCheck(False, f"cannot run nft to check table bridge {TABLE}: {exc}")
    out, err = await proc.communicate()
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        return FilterCheck(
            False, f"nftables table bridge {TABLE} is missing ({said[-1] if said else 'no table'})"
        )
    if out.decode(errors="replace") != bridge_table_text():
        return FilterCheck(False, f"nftables table bridge {TABLE} differs from what setup writes")
    return FilterCheck(True)


async def warn_without_bridge_table() -> bool:
    """Log a warning naming `volar setup` unless the bridge table is in place; True when it is."""
    check = await check_bridge_table()
    if not check.ok:
        log.warning(
            "%s: guests may reach each other's agent port and isolated VMs are not cut off from "
            "the other guests; run `volar setup` (as root) to write it",
            check.problem,
        )
    return check.ok
