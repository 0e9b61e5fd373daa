"""The agent runs on a bare python3 in the guest: standard library and itself only, never volant."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lint

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "volant_agent"


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_agent_imports_only_the_standard_library_and_itself() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources
    allowed = set(sys.stdlib_module_names) | {"volant_agent"}
    for path in sources:
        bad = imported_roots(path) - allowed
        assert not bad, f"{path.name} imports {sorted(bad)}"
        assert "volant" not in imported_roots(path)
