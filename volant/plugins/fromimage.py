"""The manifest of a plugin built from an OCI image: the image config, then the operator's flags.

The image config gives the workload (Entrypoint + Cmd, Env, WorkingDir, User); each BuildSpec
field that is set replaces its part. ExposedPorts has no manifest field of its own: it is a
hint, kept as the label `oci.exposed-ports` ("80/tcp,443/tcp"), and the first TCP port is the
default base_url of an http workload. The document goes through the same validation as any
manifest (parse_manifest), so a flag with a bad value is refused with the manifest's wording.
"""

from __future__ import annotations

import json
import re
from typing import Any

from volant.model import InvalidArgument
from volant.model.builds import BuildSpec, ImageFacts
from volant.model.validate import DNS_LABEL
from volant.plugins.manifest import parse_manifest

PORTS_LABEL = "oci.exposed-ports"
RUNTIME = "oci"
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
_DNS = re.compile(DNS_LABEL)


def plugin_name_for(image: str) -> str:
    """A default plugin name from an image reference: its last path component, without tag or
    digest, lower-cased to a DNS label ("docker://r.example/team/web:1.2" -> "web")."""
    _transport, _, rest = image.partition(":")
    rest = rest.removeprefix("//").split("@", 1)[0]
    last = rest.rstrip("/").rsplit("/", 1)[-1]
    if _transport == "docker":
        last = last.split(":", 1)[0]
    else:
        last = last.split(":", 1)[0]
        last = last.removesuffix(".tar") or last
    name = re.sub(r"[^a-z0-9-]+", "-", last.lower()).strip("-")[:63].strip("-")
    if not name or not _DNS.fullmatch(name):
        raise InvalidArgument(
            f"name: cannot make a plugin name from {image!r}", hint="give one with --name",
            field="name",
        )  # fmt: skip
    return name


def version_for(image: str, digest: str) -> str:
    """A default version: the registry tag when it is a valid version string, else the first
    12 hex digits of the manifest digest."""
    tag = ""
    if image.startswith("docker://"):
        rest = image.removeprefix("docker://").split("@", 1)[0]
        _head, colon, tail = rest.rpartition(":")
        if colon and "/" not in tail:
            tag = tail
    if tag and _VERSION.fullmatch(tag):
        return tag
    return digest.removeprefix("sha256:")[:12]


def _argv(facts: ImageFacts, spec: BuildSpec) -> list[str]:
    if spec.entrypoint is not None:
        return [*spec.entrypoint, *(spec.args or ())]
    return [*facts.entrypoint, *(facts.cmd if spec.args is None else spec.args)]


def _base_url(facts: ImageFacts, spec: BuildSpec) -> str:
    if spec.base_url:
        return spec.base_url
    for port in facts.exposed_ports:
        number, _, proto = port.partition("/")
        if proto in ("", "tcp") and number.isdigit():
            return f"http://127.0.0.1:{number}"
    raise InvalidArgument(
        "base_url: an http workload needs the address it serves on, and the image exposes no "
        "TCP port",
        hint="give --base-url http://127.0.0.1:PORT",
        field="base_url",
    )


def workload_from(facts: ImageFacts, spec: BuildSpec) -> dict[str, Any]:
    """The manifest's workload object."""
    argv = _argv(facts, spec)
    if not argv:
        raise InvalidArgument(
            f"entrypoint: {facts.image} names no Entrypoint or Cmd, so there is nothing to run",
            hint="give the command with --entrypoint (and --arg)",
            field="entrypoint",
        )
    kind = spec.workload_type or ("http" if spec.health_path or spec.base_url else "process")
    workload: dict[str, Any] = {"type": kind, "entrypoint": argv}
    env = {**facts.env, **spec.env}
    if env:
        workload["env"] = env
    workdir = facts.workdir if spec.workdir is None else spec.workdir
    if workdir:
        workload["workdir"] = workdir
    user = facts.user if spec.user is None else spec.user
    if user:
        workload["user"] = user
    if kind == "http" or spec.health_path:  # a health check is asked of base_url
        workload["base_url"] = _base_url(facts, spec)
    if spec.health_path:
        workload["health_check"] = {"path": spec.health_path}
    return workload


def manifest_from_image(facts: ImageFacts, spec: BuildSpec, name: str) -> dict[str, Any]:
    """The manifest document (not yet validated) of the plugin built from facts."""
    document: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": spec.version or version_for(facts.image, facts.digest),
        "runtime": RUNTIME,
        "resources": {"cpu_cores": spec.cpu_cores, "memory_mb": spec.memory_mb},
        "workload": workload_from(facts, spec),
        "rootfs": {
            "path": facts.rootfs_path,
            "checksum": facts.rootfs_checksum,
            "format": "erofs",
        },
        "network": {"mode": "bridged"},
        "image": facts.image,
        "image_digest": facts.digest,
    }
    if facts.exposed_ports:
        document["labels"] = {PORTS_LABEL: ",".join(facts.exposed_ports)}
    return document


def manifest_text(facts: ImageFacts, spec: BuildSpec, name: str) -> str:
    """The manifest as JSON text, validated: a flag the image does not fit fails here, with
    the manifest check's wording."""
    text = json.dumps(manifest_from_image(facts, spec, name), indent=2, sort_keys=True)
    parse_manifest(text)
    return text


def check_flags(spec: BuildSpec, name: str) -> None:
    """Validate the flags against a stand-in image, before anything is pulled."""
    stand_in = ImageFacts(
        image=spec.image,
        digest="sha256:" + "0" * 64,
        entrypoint=("/bin/sh",),
        cmd=(),
        env={},
        workdir="",
        user="",
        exposed_ports=("80/tcp",),
        rootfs_path="/stand-in.erofs",
        rootfs_checksum="sha256:" + "0" * 64,
        rootfs_size=0,
        cache_hit=False,
    )
    manifest_text(stand_in, spec, name)
