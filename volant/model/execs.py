"""A command run in a VM's workload (`volar vms exec`): what is asked, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Exit codes as shells and timeout(1) give them.
EXIT_TIMED_OUT = 124
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
MAX_ARGV = 1024
MAX_TIMEOUT = 24 * 3600


@dataclass(frozen=True)
class ExecSpec:
    """One command for a VM's workload.

    user and workdir empty: the workload's own. env goes over the workload's environment.
    timeout 0: none. rows and cols size the pty when tty is set.
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    timeout: float = 0.0
    tty: bool = False
    rows: int = 24
    cols: int = 80

    def to_agent(self) -> dict[str, Any]:
        """The agent's exec request (agent/volant_agent/exec.py)."""
        return {
            "argv": list(self.argv),
            "env": self.env,
            "workdir": self.workdir,
            "user": self.user,
            "timeout": self.timeout,
            "tty": self.tty,
            "rows": self.rows,
            "cols": self.cols,
        }


@dataclass(frozen=True)
class ExecEnd:
    """How a command ended: its exit code (128+N for signal N, 124 timed out, 127 not found,
    126 not runnable), the signal's name, and the agent's error message when it never ran."""

    exit_code: int
    signal: str | None = None
    timed_out: bool = False
    error: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ExecEnd:
        code = doc.get("exit_code")
        return cls(
            exit_code=code if isinstance(code, int) else EXIT_CANNOT_RUN,
            signal=doc.get("signal") if isinstance(doc.get("signal"), str) else None,
            timed_out=doc.get("timed_out") is True,
            error=doc.get("error") if isinstance(doc.get("error"), str) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "error": self.error,
        }


@dataclass(frozen=True)
class ExecOutput:
    """A whole command's result, its output capped (truncated says whether any was cut)."""

    end: ExecEnd
    stdout: bytes
    stderr: bytes
    truncated: bool
