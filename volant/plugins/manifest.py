"""Parse and validate plugin manifests (YAML or JSON) into frozen `Manifest` objects.

Structure is checked against `manifest_schema()`; what a schema cannot say (duplicate JSON keys,
URL ports, actions needing an HTTP workload, two actions on one route) is checked here after it.
Every error is an InvalidArgument whose message starts with the dotted path of the bad field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator, ValidationError

from volant.model import (
    Action,
    Artifact,
    HealthCheck,
    InvalidArgument,
    Manifest,
    NetworkMode,
    PortMapping,
    Resources,
    RestartPolicy,
    RootfsArtifact,
    RootfsFormat,
    Workload,
    WorkloadType,
    validate_publish,
)
from volant.plugins.schema import manifest_schema

Format = Literal["json", "yaml"]

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_REPORTED = 5
_YAML_SUFFIXES = (".yaml", ".yml")
# Plugin names that a REST route of its own shadows: GET /api/v1/plugins/schema.
RESERVED_NAMES = frozenset({"schema"})


@cache
def _validator() -> Draft202012Validator:
    # Built once per process: compiling the schema's references is the slow part.
    return Draft202012Validator(manifest_schema())


def canonical_json(doc: dict[str, Any]) -> str:
    """The manifest document as canonical JSON: sorted keys, compact separators, UTF-8 text."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_of(doc: dict[str, Any]) -> str:
    """ "sha256:<hex>" of the canonical JSON; stable across YAML/JSON spellings and key order."""
    return "sha256:" + hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


def load_manifest(path: Path) -> Manifest:
    """Read and parse a manifest file; .yaml/.yml files are YAML, anything else JSON."""
    fmt: Format = "yaml" if path.suffix.lower() in _YAML_SUFFIXES else "json"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read manifest {path}: {exc.strerror}") from exc
    return parse_manifest(data, fmt=fmt)


def parse_manifest(text: str | bytes, *, fmt: Format | None = None) -> Manifest:
    """Parse manifest text; fmt None means JSON when the text starts with '{', YAML otherwise."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"manifest is not UTF-8: {exc.reason}") from exc
    if fmt is None:
        fmt = "json" if text.lstrip().startswith("{") else "yaml"
    doc = _load_json(text) if fmt == "json" else _load_yaml(text)
    return validate_document(doc)


def validate_document(doc: Any) -> Manifest:
    """Validate an already decoded manifest document and build the Manifest."""
    if not isinstance(doc, dict):
        raise InvalidArgument("manifest must be an object (a mapping of keys to values)")
    errors = sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.path])
    if errors:
        described = list(dict.fromkeys(_describe(e) for e in errors))
        field = described[0].split(":", 1)[0]
        more = len(described) - MAX_REPORTED
        text = "; ".join(described[:MAX_REPORTED]) + (f" (and {more} more)" if more > 0 else "")
        raise InvalidArgument(f"invalid manifest: {text}", field=field)
    _check_semantics(doc)
    return _build(doc)


def _load_json(text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            # json.loads would silently keep the last value; a reviewer reading the file might
            # trust the first.
            raise InvalidArgument(f"manifest repeats the key(s) {', '.join(dupes)}")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def _load_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"manifest is not valid YAML: {exc}") from exc


def _dotted(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> str:
    """One "field: what is wrong" line for a schema error."""
    path = list(error.absolute_path)
    kind, instance = error.validator, error.instance
    value: Any = error.validator_value
    # Our schema has no boolean subschemas, so the failing subschema is always a mapping.
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = set(schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in known)
        return "; ".join(f"{_dotted([*path, k])}: unknown key" for k in extra)
    if kind == "required" and isinstance(instance, dict):
        missing = [k for k in value if k not in instance]
        props: Mapping[str, Any] = schema.get("properties", {})
        return "; ".join(
            f"{_dotted([*path, k])}: {props.get(k, {}).get('x-missing', 'is required')}"
            for k in missing
        )
    if kind == "dependentRequired" and isinstance(instance, dict):
        return "; ".join(
            f"{_dotted([*path, need])}: is required with {key}"
            for key, needs in value.items()
            if key in instance
            for need in needs
            if need not in instance
        )
    where = str(schema.get("x-field", _dotted(path))) or "manifest"
    text = str(schema.get("x-message") or _generic(error))
    if "propertyNames" in error.absolute_schema_path:
        text += f", got {instance!r}"
    return f"{where}: {text}"


_TEMPLATES = {
    "enum": "must be one of {choices}",
    "const": "must be {value!r}",
    "minimum": "must be at least {value}",
    "maximum": "must be at most {value}",
    "maxLength": "must be at most {value} characters",
    "type": "must be of type {value}, got {got}",
}


def _generic(error: ValidationError) -> str:
    template = _TEMPLATES.get(str(error.validator))
    if template is None:
        return error.message
    value = error.validator_value
    choices = ", ".join(str(v) for v in value) if isinstance(value, list) else ""
    return template.format(value=value, choices=choices, got=type(error.instance).__name__)


def _check_semantics(doc: dict[str, Any]) -> None:
    if doc["name"] in RESERVED_NAMES:
        raise InvalidArgument(
            f"invalid manifest: name: {doc['name']!r} is reserved "
            f"(GET /api/v1/plugins/{doc['name']} is a route of its own)",
            field="name",
        )
    workload: dict[str, Any] = doc["workload"]
    base_url = workload.get("base_url", "")
    if base_url:
        try:
            port = urlsplit(base_url).port
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid manifest: workload.base_url: {exc}", field="workload.base_url"
            ) from exc
        if port == 0:
            raise InvalidArgument(
                "invalid manifest: workload.base_url: port 0 is not a port",
                field="workload.base_url",
            )
    actions: dict[str, dict[str, Any]] = doc.get("actions", {})
    if actions and not base_url:
        raise InvalidArgument(
            "invalid manifest: actions: need workload.base_url to proxy them to",
            field="actions",
        )
    routes: dict[tuple[str, str], str] = {}
    for name in sorted(actions):
        route = (actions[name]["method"], actions[name]["path"])
        if route in routes:
            # The agent's legacy /v1<path> routes would make one of them unreachable.
            raise InvalidArgument(
                f"invalid manifest: actions.{name}: same method and path as "
                f"actions.{routes[route]}",
                field=f"actions.{name}",
            )
        routes[route] = name


def _artifact(raw: dict[str, Any] | None) -> Artifact | None:
    if raw is None:
        return None
    return Artifact(
        url=raw.get("url", ""), path=raw.get("path", ""), checksum=raw.get("checksum", "")
    )


def _rootfs(raw: dict[str, Any] | None) -> RootfsArtifact | None:
    if raw is None:
        return None
    return RootfsArtifact(
        url=raw.get("url", ""),
        path=raw.get("path", ""),
        checksum=raw.get("checksum", ""),
        format=RootfsFormat(raw.get("format", RootfsFormat.EROFS)),
        ephemeral=raw.get("ephemeral", False),
    )


def _workload(raw: dict[str, Any]) -> Workload:
    health = raw.get("health_check")
    return Workload(
        type=WorkloadType(raw["type"]),
        entrypoint=tuple(raw["entrypoint"]),
        env=dict(raw.get("env", {})),
        workdir=raw.get("workdir", ""),
        base_url=raw.get("base_url", ""),
        health_check=None if health is None else HealthCheck(**health),
        restart=RestartPolicy(raw.get("restart", RestartPolicy.ON_FAILURE)),
        user=raw.get("user", ""),
    )


def _publish(network: dict[str, Any]) -> tuple[PortMapping, ...]:
    publish = validate_publish(network.get("publish", []), "network.publish")
    if publish and network.get("mode") == NetworkMode.VSOCK:
        raise InvalidArgument(
            "a plugin in network mode vsock runs its VMs without a network card: "
            "it cannot publish ports",
            hint="drop network.publish, or use mode bridged or dhcp",
            field="network.publish",
        )
    return publish


def _build(doc: dict[str, Any]) -> Manifest:
    canonical = canonical_json(doc)
    return Manifest(
        schema_version=doc["schema_version"],
        name=doc["name"],
        version=doc["version"],
        runtime=doc["runtime"],
        resources=Resources(**doc["resources"]),
        workload=_workload(doc["workload"]),
        network=NetworkMode(doc.get("network", {}).get("mode", NetworkMode.BRIDGED)),
        initramfs=_artifact(doc.get("initramfs")),
        rootfs=_rootfs(doc.get("rootfs")),
        kernel=_artifact(doc.get("kernel")),
        actions={name: Action(**spec) for name, spec in doc.get("actions", {}).items()},
        openapi=doc.get("openapi", ""),
        labels=dict(doc.get("labels", {})),
        isolated=doc.get("network", {}).get("isolated", False),
        publish=_publish(doc.get("network", {})),
        image=doc.get("image", ""),
        image_digest=doc.get("image_digest", ""),
        digest="sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        canonical_json=canonical,
    )
