"""`volar plugins`: the daemon's plugin catalogue, plus offline key generation and signing.

keygen and sign never talk to the daemon: a publisher signs on a build machine, and the host's
volantd verifies with the same volant.plugins.signing code (the one import the CLI contract in
pyproject.toml allows beyond volant.client and volant.model).
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

import click

from volant.cli.completion import complete_files, complete_plugins
from volant.cli.context import Context, fail, json_option, pass_ctx
from volant.cli.output import emit_json, plugin_details, plugin_table, short_digest
from volant.client import VolantClient
from volant.model import VolantError
from volant.plugins import signing

T = TypeVar("T")
URL_SCHEMES = ("http", "https")


def _run(fn: Callable[[], T]) -> T:
    """Run a local action; a VolantError becomes one line plus a hint and exit status 1."""
    try:
        return fn()
    except VolantError as exc:
        ctx = click.get_current_context()
        if getattr(ctx.find_root().obj, "debug", False):
            traceback.print_exc()
        fail(exc.message, exc.hint)
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror}")


@click.group()
def plugins() -> None:
    """Manage plugins and their signing keys."""


@plugins.command("list")
@json_option
@pass_ctx
def plugins_list(ctx: Context, as_json: bool) -> None:
    """List installed plugins."""
    items = ctx.call(lambda c: c.list_plugins())
    emit_json(items) if as_json else plugin_table(items)


@plugins.command("show")
@click.argument("name", shell_complete=complete_plugins)
@json_option
@pass_ctx
def plugins_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show an installed plugin and its manifest."""
    plugin = ctx.call(lambda c: c.get_plugin(name))
    emit_json(plugin) if as_json else plugin_details(plugin)


@plugins.command("schema")
@pass_ctx
def plugins_schema(ctx: Context) -> None:
    """Print the manifests' JSON Schema."""
    emit_json(ctx.call(lambda c: c.plugin_schema()))


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{what} {path} is not UTF-8 text")


def _signature(manifest: Path | None, signature_file: Path | None) -> str | None:
    """--signature, else the `volar plugins sign` default next to a manifest file, else None."""
    if signature_file is None and manifest is not None:
        default = manifest.with_name(manifest.name + signing.SIGNATURE_SUFFIX)
        if default.is_file():
            signature_file = default
    if signature_file is None:
        return None
    signature = _read_text(signature_file, "signature").strip()
    if not signature:
        fail(f"signature file {signature_file} is empty")
    return signature


@dataclass(frozen=True)
class InstallRequest:
    """What `volar plugins install` sends: the manifest's text and origin, or a URL."""

    manifest_text: str | None = None
    url: str | None = None
    signature: str | None = None
    origin: str | None = None


def install_request(source: str, signature_file: Path | None) -> InstallRequest:
    """The request for SOURCE: an http(s) URL, a file: URL or a file path.

    click.BadParameter (a usage error) when SOURCE is neither; exits 1 when a file cannot be
    read.
    """
    parts = urlsplit(source)
    if parts.scheme in URL_SCHEMES:
        return InstallRequest(url=source, signature=_signature(None, signature_file))
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
    elif "://" in source:
        raise click.BadParameter(
            f"{source!r}: give a file path or an http(s) URL", param_hint="SOURCE"
        )
    else:
        path = Path(source)
    if not path.is_file():
        raise click.BadParameter(f"file {str(path)!r} does not exist", param_hint="SOURCE")
    return InstallRequest(
        manifest_text=_read_text(path, "manifest"),
        signature=_signature(path, signature_file),
        # The daemon resolves the manifest's relative artifact paths against where it lives.
        origin=path.resolve().as_uri(),
    )


@plugins.command("install")
@click.argument("source", shell_complete=complete_files)
@click.option(
    "--signature",
    "signature_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Detached signature file [default: SOURCE.sig when it exists; for a URL, the daemon "
    "tries URL.sig].",
)
@click.option("--replace", is_flag=True, help="Upgrade an installed plugin of the same name.")
@json_option
@pass_ctx
def plugins_install(
    ctx: Context, source: str, signature_file: Path | None, replace: bool, as_json: bool
) -> None:
    """Install a plugin from a manifest file or URL.

    SOURCE is a manifest file (JSON or YAML) or an http(s) URL of one. Relative artifact
    paths in it resolve against its location.
    """
    request = install_request(source, signature_file)
    plugin = ctx.call(
        lambda c: c.install_plugin(
            manifest_text=request.manifest_text,
            url=request.url,
            signature=request.signature,
            origin=request.origin,
            replace=replace,
        )
    )
    if as_json:
        emit_json(plugin)
        return
    signer = f"signed by {plugin['signer']}" if plugin.get("signer") else "unsigned"
    click.echo(
        f"Plugin {plugin['name']} {plugin['version']} installed "
        f"({signer}, digest {short_digest(str(plugin.get('digest') or ''))})"
    )


def _verb(
    name: str, help_text: str, done: str, call: Callable[[VolantClient, str], Awaitable[Any]]
) -> None:
    @plugins.command(name, help=help_text)
    @click.argument("plugin", shell_complete=complete_plugins)
    @json_option
    @pass_ctx
    def command(ctx: Context, plugin: str, as_json: bool) -> None:
        result = ctx.call(lambda c: call(c, plugin))
        if as_json:
            emit_json(result if result is not None else {"name": plugin, "removed": True})
        else:
            click.echo(f"Plugin {plugin} {done}")


_verb("enable", "Let new VMs use a plugin.", "enabled", lambda c, p: c.enable_plugin(p))
_verb(
    "disable",
    "Stop new VMs from using a plugin (running VMs keep it).",
    "disabled",
    lambda c, p: c.disable_plugin(p),
)
_verb(
    "remove",
    "Remove a plugin (refused while VMs use it).",
    "removed",
    lambda c, p: c.remove_plugin(p),
)


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
@json_option
def keygen(name: str, directory: Path, as_json: bool) -> None:
    """Generate an Ed25519 signing key pair NAME."""
    key_path, pub_path = _run(lambda: signing.generate_keypair(directory, name))
    if as_json:
        emit_json({"private_key": str(key_path), "public_key": str(pub_path)})
        return
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
@json_option
def sign(manifest: Path, key_path: Path, out: Path | None, as_json: bool) -> None:
    """Write a detached signature over the exact bytes of MANIFEST."""
    target = out or manifest.with_name(manifest.name + signing.SIGNATURE_SUFFIX)
    signature = _run(lambda: signing.sign(manifest.read_bytes(), key_path))
    _run(lambda: target.write_text(signature + "\n", encoding="ascii"))
    if as_json:
        emit_json({"manifest": str(manifest), "signature_file": str(target)})
        return
    click.echo(f"wrote {target}")
    if out is None:
        click.echo(f"hint: `volar plugins install {manifest}` sends {target.name} along", err=True)
    else:
        click.echo(f"hint: `volar plugins install {manifest} --signature {target}`", err=True)
