"""The nftables table `inet volant`: masquerade for the VM subnet and forward rules for the
bridge, written in the canonical form `nft list table` prints so drift is a text comparison."""

from __future__ import annotations

from ipaddress import IPv4Network

TABLE = "volant"


def table_text(bridge: str, subnet: IPv4Network) -> str:
    """The table exactly as `nft list table inet volant` shows it once loaded."""
    return (
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
        f'\t\toifname "{bridge}" reject\n'
        "\t}\n"
        "}\n"
    )


def ruleset_file(bridge: str, subnet: IPv4Network) -> str:
    """A file for `nft -f` that replaces the table atomically, whether or not it exists.

    Guests may open connections out (masqueraded behind this host); from other interfaces only
    replies are forwarded to them, as with libvirt's default NAT network.
    """
    return (
        "#!/usr/sbin/nft -f\n"
        "# Written by `volar setup`; loaded again by volantd.service (ExecStartPre).\n"
        "# `volar setup --undo` deletes the table and this file.\n"
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n" + table_text(bridge, subnet)
    )
