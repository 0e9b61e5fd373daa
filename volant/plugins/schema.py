"""The JSON Schema (draft 2020-12) of plugin manifests: the one source of truth for structure.

`x-message` is an annotation of ours (validators ignore unknown keywords): when a check fails
inside a subschema that carries one, manifest.py reports it instead of jsonschema's wording.
`x-missing` on a property likewise replaces "is required" when that property is absent.
"""

from __future__ import annotations

import copy
from typing import Any

from volant.model.publish import PUBLISH_PATTERN, PUBLISH_RULE
from volant.model.validate import DNS_LABEL

SCHEMA_ID = "https://volantvm.com/schemas/plugin-manifest/v1.json"
SCHEMA_VERSION = 1

SHA256 = r"^sha256:[0-9a-f]{64}$"
HTTP_URL = r"^https?://[^\s/?#]+(/\S*)?$"
ABS_PATH = r"^/\S*$"
# A host path, or one relative to where the manifest came from ("hello.cpio", "../x.cpio").
ARTIFACT_PATH = r"^[^\x00]+$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Labels follow Kubernetes' keys loosely: prefix-free, readable in `volar plugins list`.
LABEL_KEY = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
# Action names appear in guest URLs (/v1/actions/<name>) and on command lines.
ACTION_NAME = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"

_TIMEOUT_MS = {"type": "integer", "minimum": 1, "maximum": 3_600_000}

_ARTIFACT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    # Every artifact is pinned, wherever it comes from: the checksum is what makes a cached copy
    # trustworthy, and a host file can change between install and boot.
    "required": ["checksum"],
    "properties": {
        "url": {"type": "string", "pattern": HTTP_URL, "x-message": "must be an http(s) URL"},
        "path": {
            "type": "string",
            "pattern": ARTIFACT_PATH,
            "x-message": "must be a non-empty path without NUL characters (absolute, or "
            "relative to the manifest's location)",
        },
        "checksum": {
            "type": "string",
            "pattern": SHA256,
            "x-message": "must be 'sha256:' followed by 64 lowercase hex digits",
            "x-missing": "is required: 'sha256:' followed by the artifact's sha256sum",
        },
    },
    "oneOf": [{"required": ["url"]}, {"required": ["path"]}],
    "x-message": "needs exactly one of url or path",
}

# A root file system disk: an artifact, with its file system and whether VMs keep their writes.
_ROOTFS: dict[str, Any] = {
    **_ARTIFACT,
    "properties": {
        **_ARTIFACT["properties"],
        "format": {"enum": ["erofs", "squashfs", "ext4"]},
        # true: each VM's writes go to a tmpfs and are lost at stop (no per-VM disk).
        "ephemeral": {"type": "boolean"},
    },
}

# A user name or uid, optionally with a group name or gid: resolved in the rootfs' /etc/passwd.
USER = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$"

_HEALTH_CHECK: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {"type": "string", "pattern": ABS_PATH, "x-message": "must start with '/'"},
        "timeout_ms": _TIMEOUT_MS,
        "start_period_ms": _TIMEOUT_MS,
    },
}

_WORKLOAD: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "entrypoint"],
    "properties": {
        "type": {"enum": ["http", "process"]},
        "entrypoint": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1, "x-message": "must be a non-empty string"},
            "x-message": "must be a non-empty list of strings",
        },
        "env": {
            "type": "object",
            "propertyNames": {
                "pattern": ENV_NAME,
                "x-message": "variable names must match [A-Za-z_][A-Za-z0-9_]*",
            },
            "additionalProperties": {"type": "string"},
        },
        "workdir": {"type": "string", "pattern": ABS_PATH, "x-message": "must be absolute"},
        "user": {
            "type": "string",
            "pattern": USER,
            "x-message": "must be a user name or uid, optionally followed by :group or :gid",
        },
        "base_url": {"type": "string", "pattern": HTTP_URL, "x-message": "must be an http(s) URL"},
        "health_check": _HEALTH_CHECK,
        "restart": {"enum": ["always", "on-failure", "never"]},
    },
    # The agent health-checks and proxies an HTTP workload at base_url.
    "if": {"required": ["type"], "properties": {"type": {"const": "http"}}},
    "then": {"required": ["base_url"]},
    "dependentRequired": {"health_check": ["base_url"]},
}

_ACTION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "path"],
    "properties": {
        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
        "path": {"type": "string", "pattern": ABS_PATH, "x-message": "must start with '/'"},
        "timeout_ms": _TIMEOUT_MS,
    },
}

_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "Volant plugin manifest",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "name", "version", "runtime", "resources", "workload"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {
            "type": "string",
            "pattern": DNS_LABEL,
            "x-message": "must be a DNS label (a-z, 0-9, '-', 1-63 characters)",
        },
        "version": {
            "type": "string",
            "pattern": r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$",
            "x-message": "must be a version string such as 1.2.0 (letters, digits, . + _ -)",
        },
        "runtime": {
            "type": "string",
            "pattern": r"^[a-z0-9][a-z0-9._-]{0,62}$",
            "x-message": "must be a runtime name (a-z, 0-9, . _ -)",
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cpu_cores", "memory_mb"],
            "properties": {
                "cpu_cores": {"type": "integer", "minimum": 1, "maximum": 512},
                "memory_mb": {"type": "integer", "minimum": 16, "maximum": 4_194_304},
            },
        },
        "workload": _WORKLOAD,
        "initramfs": {"$ref": "#/$defs/artifact"},
        "rootfs": _ROOTFS,
        "kernel": {"$ref": "#/$defs/artifact"},
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["bridged", "dhcp", "vsock"]},
                # The plugin's VMs reach the host and beyond, never another guest.
                "isolated": {"type": "boolean"},
                # Host ports every VM of the plugin publishes unless it names its own list.
                "publish": {
                    "type": "array",
                    "maxItems": 64,
                    "items": {
                        "type": "string",
                        "pattern": PUBLISH_PATTERN,
                        "x-message": f"must be {PUBLISH_RULE}",
                    },
                },
            },
        },
        "actions": {
            "type": "object",
            "propertyNames": {
                "pattern": ACTION_NAME,
                "x-message": "action names must be DNS-label-like (a-z, 0-9, '-', '_')",
            },
            "additionalProperties": {"$ref": "#/$defs/action"},
        },
        "openapi": {
            "type": "string",
            "pattern": r"^(https?://\S+|/\S*)$",
            "x-message": "must be an http(s) URL or a path on base_url",
        },
        # The OCI image the plugin was built from (`volar plugins build`) and its digest.
        "image": {"type": "string", "minLength": 1, "maxLength": 1024},
        "image_digest": {
            "type": "string",
            "pattern": SHA256,
            "x-message": "must be 'sha256:' followed by 64 lowercase hex digits",
        },
        "labels": {
            "type": "object",
            "propertyNames": {
                "pattern": LABEL_KEY,
                "x-message": "label keys must be 1-63 of A-Z a-z 0-9 . _ / -",
            },
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
    },
    "allOf": [
        {
            # Exactly one boot image; the kernel is optional (the host's default otherwise).
            "oneOf": [{"required": ["initramfs"]}, {"required": ["rootfs"]}],
            "x-message": "exactly one of initramfs or rootfs is required",
            "x-field": "initramfs|rootfs",
        }
    ],
    "$defs": {"artifact": _ARTIFACT, "action": _ACTION},
}


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema; a copy, so callers may change it freely."""
    return copy.deepcopy(_SCHEMA)
