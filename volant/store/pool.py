"""The IP address pool: seeding, leasing and releasing (runs on the store thread)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

import peewee

from volant.model import InvalidArgument
from volant.store.rows import FREE, LEASED, IPRow

log = logging.getLogger(__name__)

# A /16 already means 65534 rows; larger subnets are a configuration mistake, not a pool.
MAX_POOL_ADDRESSES = 1 << 16
# Stays well under SQLite's bound-parameter limit (32766) with three columns a row.
_CHUNK = 500

_T = TypeVar("_T")


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def ensure_pool(db: peewee.SqliteDatabase, network: IPv4Network, exclude: set[IPv4Address]) -> int:
    """Make the table hold exactly the usable hosts of network; return their number.

    Free addresses outside the new pool (an earlier subnet, a new host address) go away;
    leased ones stay until their VM is deleted, so a subnet change never strands a running VM.
    """
    if network.num_addresses > MAX_POOL_ADDRESSES:
        raise InvalidArgument(
            f"subnet {network} is too large for the IP pool (at most a /16)", field="network"
        )
    wanted = {int(addr): str(addr) for addr in network.hosts() if addr not in exclude}
    with db.atomic():
        existing = {
            num: status
            for num, status in IPRow.select(IPRow.ip_num, IPRow.status).tuples().execute(db)
        }
        stale_free = [
            num for num, status in existing.items() if num not in wanted and status == FREE
        ]
        stale_leased = sorted(
            num for num, status in existing.items() if num not in wanted and status == LEASED
        )
        for chunk in _chunks(stale_free):
            IPRow.delete().where(IPRow.ip_num.in_(chunk)).execute(db)
        missing = [
            {"ip_address": text, "ip_num": num, "status": FREE}
            for num, text in sorted(wanted.items())
            if num not in existing
        ]
        for rows in _chunks(missing):
            IPRow.insert_many(rows).on_conflict_ignore().execute(db)
    if stale_free:
        log.info("IP pool: removed %d free addresses outside %s", len(stale_free), network)
    if stale_leased:
        log.warning(
            "IP pool: %d leased addresses lie outside %s (%s); they are kept until their VMs "
            "are deleted",
            len(stale_leased),
            network,
            ", ".join(str(IPv4Address(num)) for num in stale_leased[:10]),
        )
    return len(wanted)


def lowest_free(db: peewee.SqliteDatabase) -> str | None:
    """The free address with the smallest numeric value (.10 comes after .9)."""
    row = (
        IPRow.select(IPRow.ip_address).where(IPRow.status == FREE).order_by(IPRow.ip_num).first(db)
    )
    return None if row is None else row.ip_address


def lease(db: peewee.SqliteDatabase, ip_address: str, vm_id: int, when: datetime) -> bool:
    """Mark a free address leased to vm_id; False when it was not free."""
    changed: int = (
        IPRow.update(status=LEASED, vm_id=vm_id, leased_at=when)
        .where((IPRow.ip_address == ip_address) & (IPRow.status == FREE))
        .execute(db)
    )
    return changed == 1


def release(
    db: peewee.SqliteDatabase, vm_id: int, in_pool: Callable[[IPv4Address], bool] | None = None
) -> int:
    """Free every address leased to vm_id; return how many. An address the pool no longer
    holds (in_pool says no: an earlier subnet, or the DHCP range) goes instead of being freed,
    so that it is never leased again."""
    rows = IPRow.select(IPRow.ip_address).where(IPRow.vm_id == vm_id).execute(db)
    retired = [
        r.ip_address for r in rows if in_pool is not None and not in_pool(IPv4Address(r.ip_address))
    ]
    if retired:
        IPRow.delete().where(IPRow.ip_address.in_(retired)).execute(db)
    changed: int = (
        IPRow.update(status=FREE, vm_id=None, leased_at=None)
        .where(IPRow.vm_id == vm_id)
        .execute(db)
    )
    return changed + len(retired)


def usage(db: peewee.SqliteDatabase) -> tuple[int, int]:
    leased: int = IPRow.select().where(IPRow.status == LEASED).count(db)
    total: int = IPRow.select().count(db)
    return leased, total


def leased_to(db: peewee.SqliteDatabase, vm_id: int) -> bool:
    """True when vm_id holds an address of the pool."""
    found: bool = IPRow.select().where(IPRow.vm_id == vm_id).exists(db)
    return found
