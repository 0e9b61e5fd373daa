"""The README's operator commands, for the tests that run them.

A fenced ```sh block right after a `<!-- test: NAME -->` comment is run by a test that asks for
NAME (tests/system/test_deb.py runs install, quickstart and troubleshooting in the namespaced
systemd). tests/unit/test_readme.py checks that every sh block in the operator sections is tagged,
so no command is shown that no test runs.
"""

from __future__ import annotations

import re

from scripts.readme_settings import README

TAGGED = re.compile(r"<!-- test: ([a-z-]+) -->\n```sh\n(.*?)```", re.DOTALL)
SH_BLOCK = re.compile(r"```sh\n")


def blocks(name: str, text: str | None = None) -> list[str]:
    """The command lines of every block tagged name, in order, without comments or blanks."""
    text = README.read_text() if text is None else text
    found = [body for tag, body in TAGGED.findall(text) if tag == name]
    if not found:
        raise LookupError(f"README.md has no block tagged {name!r}")
    lines = []
    for body in found:
        for line in body.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def section(heading: str, text: str | None = None) -> str:
    """The text under a `## heading`, up to the next `## `."""
    text = README.read_text() if text is None else text
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def untagged_sh_blocks(heading: str) -> int:
    """How many ```sh blocks under heading no test runs."""
    body = section(heading)
    return len(SH_BLOCK.findall(body)) - len(TAGGED.findall(body))
