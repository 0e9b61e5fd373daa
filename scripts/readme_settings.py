"""Rewrite the README's configuration reference from the settings table.

`python3 -m scripts.readme_settings` after changing SETTINGS; tests/unit/test_readme.py fails
until the README matches.
"""

from __future__ import annotations

import re
from pathlib import Path

from volant.config.docs import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- settings -->\n.*?<!-- /settings -->\n|<!-- settings -->\n", re.DOTALL)


def render(text: str) -> str:
    """text with the block between the settings markers replaced by the current table."""
    block = f"<!-- settings -->\n{settings_markdown()}<!-- /settings -->\n"
    new, count = BLOCK.subn(lambda _: block, text, count=1)
    if count != 1:
        raise SystemExit("README.md has no <!-- settings --> marker")
    return new


def main() -> None:
    README.write_text(render(README.read_text()))


if __name__ == "__main__":
    main()
