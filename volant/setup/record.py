"""What setup made, kept on disk so that `--undo` removes exactly that and nothing else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volant.model import InvalidArgument
from volant.setup.steps import write_file

FORMAT = 1


@dataclass
class Record:
    """Step key → what that step made (its own small JSON object), saved after every change."""

    path: Path
    made: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Record:
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            made = data["made"]
            if data.get("format") != FORMAT or not isinstance(made, dict):
                raise ValueError(f"format {data.get('format')!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(
                f"cannot read the setup record {path}: {exc}",
                hint="remove it to let setup start over (undo then keeps everything)",
            ) from exc
        return cls(path, dict(made))

    def note(self, key: str, detail: dict[str, Any]) -> None:
        self.made[key] = detail
        self.save()

    def forget(self, key: str) -> None:
        self.made.pop(key, None)
        self.save()

    def save(self) -> None:
        """Write atomically; an empty record is no file at all."""
        if not self.made:
            self.path.unlink(missing_ok=True)
            return
        write_file(self.path, json.dumps({"format": FORMAT, "made": self.made}, indent=2) + "\n")
