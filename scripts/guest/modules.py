"""Kernel modules: .modinfo parsing and dependency order (the guest has no modprobe or depmod)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from scripts.guest.common import BuildError


def modinfo(path: Path) -> dict[str, str]:
    """Key/value pairs of an ELF64 module's .modinfo section (what modinfo(8) prints)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path}: not a little-endian ELF64 module")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for index in range(shnum):
        name_off, offset, size = section(index)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off : end] == b".modinfo":
            pairs = (item.partition(b"=") for item in data[offset : offset + size].split(b"\0"))
            return {k.decode(): v.decode() for k, _, v in pairs if k}
    raise BuildError(f"{path}: no .modinfo section")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes folded to underscores, as the kernel does) -> .ko file."""
    index: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko")):
        index[path.name[:-3].replace("-", "_")] = path
    if not index:
        raise BuildError(f"no uncompressed .ko modules under {modules_dir}")
    return index


def resolve_modules(index: dict[str, Path], wanted: Iterable[str]) -> list[str]:
    """Wanted modules and their dependencies, each after everything it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BuildError(f"module dependency cycle through {name}")
        if name not in index:
            raise BuildError(f"module {name} is not in the kernel package")
        visiting.add(name)
        depends = modinfo(index[name]).get("depends", "")
        for dep in sorted(d.replace("-", "_") for d in depends.split(",") if d):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
