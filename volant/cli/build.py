"""`volar plugins build`: a plugin from an OCI image, with a progress bar, cancelled by Ctrl-C.

The daemon runs the build in the background; volar asks where it is a few times a second and
draws a bar on stderr (when stderr is a terminal). Ctrl-C cancels the build before volar exits,
so an interrupted build leaves nothing behind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from volant.cli.completion import complete_plugins
from volant.cli.context import Context, fail, json_option, pass_ctx
from volant.cli.output import emit_json, short_digest
from volant.client import ApiError, VolantClient

POLL = 0.3
STEPS = {"queued": "queued", "pull": "pulling", "build": "building", "place": "installing"}


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def build_request(
    image: str, options: dict[str, Any], args: tuple[str, ...], no_args: bool
) -> dict[str, Any]:
    """The POST body: the image and only the flags that were given."""
    body: dict[str, Any] = {"image": image}
    for key in ("name", "version", "workdir", "user", "base_url", "health_path"):
        if options.get(key) is not None:
            body[key] = options[key]
    if options.get("entrypoint") is not None:
        body["entrypoint"] = [options["entrypoint"]]
    if args or no_args:
        body["args"] = list(args)
    if options.get("env"):
        body["env"] = _env(options["env"])
    if options.get("workload_type"):
        body["workload_type"] = options["workload_type"]
    for key in ("cpu_cores", "memory_mb"):
        if options.get(key) is not None:
            body[key] = options[key]
    if options.get("replace"):
        body["replace"] = True
    return body


async def run_build(client: VolantClient, body: dict[str, Any], *, show: bool) -> dict[str, Any]:
    """Start the build and wait for its end, drawing progress; cancel it when interrupted."""
    build = await client.build_plugin(body)
    try:
        with _Bar(show, build) as bar:
            while build["state"] == "running":
                await asyncio.sleep(POLL)
                build = await client.get_build(build["id"])
                bar.update(build)
    except (asyncio.CancelledError, KeyboardInterrupt):
        with contextlib.suppress(ApiError):
            await asyncio.shield(client.cancel_build(build["id"]))
        raise
    return build


class _Bar:
    def __init__(self, show: bool, build: dict[str, Any]) -> None:
        console = Console(stderr=True)
        self.enabled = show and console.is_terminal and not console.is_dumb_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(self._text(build), total=1.0)

    @staticmethod
    def _text(build: dict[str, Any]) -> str:
        return f"{build['plugin']}: {STEPS.get(build['step'], build['step'])}"

    def __enter__(self) -> _Bar:
        if self.enabled:
            self.progress.start()
        return self

    def update(self, build: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=build["fraction"], description=self._text(build))

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


@click.command("build")
@click.option(
    "--image",
    required=True,
    help="docker://HOST/NAME[:TAG][@DIGEST], oci:DIR[:TAG], "
    "oci-archive:FILE or docker-archive:FILE (paths on volantd's host).",
)
@click.option("--name", help="Plugin name [default: the image's last path part].")
@click.option("--version", "version", help="Plugin version [default: the tag, or the digest].")
@click.option("--entrypoint", help="Run this instead of the image's Entrypoint (drops its Cmd).")
@click.option("--arg", "args", multiple=True, help="Replace the image's Cmd; repeat per word.")
@click.option("--no-args", is_flag=True, help="Drop the image's Cmd.")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="Set a variable; repeatable.")
@click.option("--workdir", help="Replace the image's WorkingDir.")
@click.option("--user", help="Replace the image's User (name|uid[:group|gid]).")
@click.option(
    "--type",
    "workload_type",
    type=click.Choice(["http", "process"]),
    help="Workload type [default: http with --health-path or --base-url].",
)
@click.option("--base-url", help="Where an http workload serves [default: first exposed port].")
@click.option("--health-path", help="Health check path of an http workload.")
@click.option("--cpus", "cpu_cores", type=int, help="Default vCPUs of its VMs [default: 1].")
@click.option("--memory", "memory_mb", type=int, help="Default MiB of its VMs [default: 512].")
@click.option("--replace", is_flag=True, help="Upgrade an installed plugin of the same name.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@pass_ctx
def plugins_build(
    ctx: Context,
    /,
    image: str,
    args: tuple[str, ...],
    no_args: bool,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Build a plugin from an OCI image and install it.

    The image's config gives the workload (Entrypoint + Cmd, Env, WorkingDir, User); each
    option replaces its part. Ctrl-C cancels the build.
    """
    body = build_request(image, options, args, no_args)
    build = ctx.call(lambda c: run_build(c, body, show=not (quiet or as_json)))
    if as_json:
        emit_json(build)
    if build["state"] != "succeeded":
        fail(f"build {build['id']} {build['state']}: {build.get('error') or 'no reason given'}")
    if not as_json:
        hit = " (from the cache)" if build.get("cache_hit") else ""
        click.echo(
            f"Plugin {build['plugin']} built from {build['image']} "
            f"({short_digest(str(build.get('digest') or ''))}){hit} and installed"
        )


@click.command("manifest")
@click.argument("name", shell_complete=complete_plugins)
@pass_ctx
def plugins_manifest(ctx: Context, name: str) -> None:
    """Print an installed plugin's manifest (JSON), as it was installed.

    With a built plugin: `volar plugins manifest web > web.json`, `volar plugins sign web.json
    --key KEY`, then `volar plugins install web.json --replace` installs it signed.
    """
    manifest = ctx.call(lambda c: c.plugin_manifest(name))
    click.echo(json.dumps(manifest, indent=2, sort_keys=True))
