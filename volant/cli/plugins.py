"""`volar plugins`: offline key generation and manifest signing.

These commands never talk to the daemon: a publisher signs on a build machine, and the host's
volantd verifies with the same volant.plugins.signing code (the one import the CLI contract in
pyproject.toml allows beyond volant.client and volant.model).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from volant.model import VolantError
from volant.plugins import signing

T = TypeVar("T")


def _run(fn: Callable[[], T]) -> T:
    """Run a local action; a VolantError becomes one line plus a hint and exit status 1."""
    try:
        return fn()
    except VolantError as exc:
        ctx = click.get_current_context()
        if getattr(ctx.find_root().obj, "debug", False):
            traceback.print_exc()
        click.echo(f"volar: error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"volar: error: {exc.filename or ''}: {exc.strerror}", err=True)
        sys.exit(1)


@click.group()
def plugins() -> None:
    """Manage plugins and their signing keys."""


@plugins.command("keygen")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write NAME.key (secret, mode 0600) and NAME.pub.",
)
def keygen(name: str, directory: Path) -> None:
    """Generate an Ed25519 signing key pair NAME."""
    key_path, pub_path = _run(lambda: signing.generate_keypair(directory, name))
    click.echo(f"wrote {key_path} (keep it secret) and {pub_path}")
    click.echo(f"hint: install {pub_path.name} in {signing.TRUSTED_KEYS_DIR}/ on hosts to trust it")


@plugins.command("sign")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ed25519 private key (PEM) from `volar plugins keygen`.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signature file [default: MANIFEST.sig].",
)
def sign(manifest: Path, key_path: Path, out: Path | None) -> None:
    """Write a detached signature over the exact bytes of MANIFEST."""
    target = out or manifest.with_name(manifest.name + signing.SIGNATURE_SUFFIX)
    signature = _run(lambda: signing.sign(manifest.read_bytes(), key_path))
    _run(lambda: target.write_text(signature + "\n", encoding="ascii"))
    click.echo(f"wrote {target}")
