"""Who the workload runs as: workload.user resolved in the image's own /etc/passwd and /etc/group.

The image is hostile input: its passwd and group files are read through paths confined to its
root (volant_agent.paths), bounded in size, and a line that does not parse is skipped, never
fatal. The forms are Docker's: `name`, `uid`, `name:group`, `uid:gid` (and mixes). A name that is
not in passwd is an error; a numeric uid need not be there (then its gid is the one given or 0,
HOME is /). Supplementary groups are the groups in /etc/group that list the user's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volant_agent.paths import PathError, read_in_root

MAX_DB = 4 << 20  # an /etc/passwd or /etc/group larger than this is not one


class UserError(ValueError):
    """workload.user cannot be resolved in the image; the message says why."""


@dataclass(frozen=True)
class Identity:
    """A resolved user: ids, supplementary groups, name ("" for a bare uid) and home."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    name: str = ""
    home: str = "/"


ROOT = Identity(0, 0, (0,), "root", "/root")


def _records(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= fields and parts[0] and not line.startswith("#"):
            rows.append(parts)
    return rows


def _number(text: str) -> int | None:
    if text.isdigit() and len(text) <= 10 and int(text) < 2**32 - 1:
        return int(text)
    return None


def _read_db(root: Path, name: str) -> str:
    try:
        return read_in_root(root, f"/etc/{name}", MAX_DB).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except (OSError, PathError) as exc:
        raise UserError(f"cannot read the image's /etc/{name}: {exc}") from exc


def resolve_user(spec: str | None, root: Path) -> Identity:
    """The identity workload.user names in the image at root; root's when spec is empty."""
    user, _, group = (spec or "").partition(":")
    if not user:
        user = "0"
    passwd = _records(_read_db(root, "passwd"), 7)
    uid = _number(user)
    entry = next(
        (p for p in passwd if (p[0] == user if uid is None else _number(p[2]) == uid)), None
    )
    if entry is None and uid is None:
        raise UserError(f"workload.user {user!r} is not in the image's /etc/passwd")
    if entry is not None:
        uid = _number(entry[2])
        if uid is None:
            raise UserError(f"the image's /etc/passwd has no valid uid for {entry[0]!r}")
    assert uid is not None
    name = entry[0] if entry is not None else ""
    home = entry[5] if entry is not None and entry[5].startswith("/") else "/"
    groups = _records(_read_db(root, "group"), 4)
    gid = _number(entry[3]) if entry is not None else 0
    if group:
        gid = _number(group)
        if gid is None:
            found = next((g for g in groups if g[0] == group), None)
            gid = _number(found[2]) if found is not None else None
            if gid is None:
                raise UserError(f"workload.user group {group!r} is not in the image's /etc/group")
    if gid is None:
        raise UserError(f"the image's /etc/passwd has no valid gid for {name!r}")
    extra = {
        number
        for g in groups
        if name and name in g[3].split(",") and (number := _number(g[2])) is not None
    }
    return Identity(uid, gid, tuple(sorted(extra | {gid})), name, home)
