"""The nftables tables `volar setup` writes, in the canonical form `nft list table` prints so
drift is a text comparison.

`inet volant`: masquerade for the VM subnet, forward rules for the bridge, and no way from a
guest to volantd's TCP API. `bridge volant` (volant/network/firewall.py, which volantd checks at
start): no guest reaches another guest's agent port, and isolated guests no other guest at all.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from volant.network import bridge_table_text
from volant.network.ports import CHAINS

TABLE = "volant"
FAMILIES = ("inet", "bridge")


def table_text(bridge: str, subnet: IPv4Network, api_port: int | None = None) -> str:
    """The table exactly as `nft list table inet volant` shows it once loaded.

    api_port is volantd's TCP API port (api.listen); None when it serves no TCP.
    """
    text = (
        f"table inet {TABLE} {{\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"\t\tip saddr {subnet} ip daddr != {subnet} masquerade\n"
        "\t}\n"
        "\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f'\t\tiifname "{bridge}" accept\n'
        f'\t\toifname "{bridge}" ct state established,related accept\n'
        # Connections to a VM's published port (volantd's DNAT, volant.network.ports).
        f'\t\toifname "{bridge}" ct status dnat accept\n'
        f'\t\toifname "{bridge}" reject\n'
        "\t}\n"
    )
    if api_port is not None:
        # The API listens on loopback by default, but api.listen may name any address of
        # this host, and every one of them is reachable from the bridge.
        text += (
            "\n"
            "\tchain input {\n"
            "\t\ttype filter hook input priority filter; policy accept;\n"
            f'\t\tiifname "{bridge}" tcp dport {api_port} drop\n'
            "\t}\n"
        )
    return text + "}\n"


def setup_chains(listed: str) -> str:
    """`nft list table inet volant` without the chains volantd adds for published ports
    (volant.network.ports.CHAINS): setup's own part, to compare with table_text."""
    blocks = listed.split("\n\n")
    kept = [b for b in blocks if not any(f"\tchain {c} {{" in b for c in CHAINS)]
    text = "\n\n".join(kept)
    if len(kept) < len(blocks) and not text.endswith("}\n"):
        text = text.rstrip("\n") + "\n}\n"  # the last chain went, with the table's brace
    return text


def listed_tables(bridge: str, subnet: IPv4Network, api_port: int | None = None) -> dict[str, str]:
    """Each family's table as `nft list table <family> volant` shows it."""
    return {"inet": table_text(bridge, subnet, api_port), "bridge": bridge_table_text()}


def ruleset_file(bridge: str, subnet: IPv4Network, api_port: int | None = None) -> str:
    """A file for `nft -f` that replaces both tables atomically, whether or not they exist.

    Guests may open connections out (masqueraded behind this host); from other interfaces only
    replies are forwarded to them, as with libvirt's default NAT network.
    """
    tables = listed_tables(bridge, subnet, api_port)
    text = (
        "#!/usr/sbin/nft -f\n"
        "# Written by `volar setup`; loaded again by volantd.service (ExecStartPre).\n"
        "# `volar setup --undo` deletes the tables and this file.\n"
    )
    for family in FAMILIES:
        text += f"table {family} {TABLE}\ndelete table {family} {TABLE}\n"
    return text + "\n".join(tables[family] for family in FAMILIES)
