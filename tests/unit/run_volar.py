"""volar run in this process through click's CliRunner, as the CLI unit tests use it."""

from __future__ import annotations

from click.testing import CliRunner

from volant.cli.main import cli


def volar(*argv: str) -> tuple[int, str, str]:
    """`volar ARGV...`: (exit status, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(argv), prog_name="volar")
    return result.exit_code, result.stdout, result.stderr
