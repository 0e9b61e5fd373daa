"""Plugin verbs: install (with the host's trust policy), list, show, enable, disable, remove.

`PluginVerbs` is a base of `Engine`. An install checks the signature over the exact bytes the
author signed, validates the manifest, then fetches and verifies every boot artifact it names,
so a plugin that is installed can boot without reaching its source again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from volant.config import Config
from volant.engine.faults import Faults
from volant.engine.ports import Artifacts, Store
from volant.model import (
    Artifact,
    DownloadFailed,
    InvalidArgument,
    Manifest,
    Plugin,
    PluginSource,
    VolantError,
)
from volant.model.validate import validate_name
from volant.plugins.fetch import fetch_bytes
from volant.plugins.manifest import MAX_MANIFEST_BYTES, parse_manifest, validate_document
from volant.plugins.schema import manifest_schema
from volant.plugins.signing import verify

if TYPE_CHECKING:
    from volant.engine.boot import BootArtifacts

log = logging.getLogger("volant.engine.engine")

# A detached signature is one line of base64; anything much larger is not one.
MAX_SIGNATURE_BYTES = 4096


class PluginVerbs:
    """The plugin catalogue; a base of Engine."""

    config: Config
    store: Store
    faults: Faults
    artifacts: Artifacts
    plugins_changed: asyncio.Event
    """Set after every install, enable, disable and remove; front-ends that mirror the plugin
    list (the D-Bus objects) wait on it and clear it."""

    if TYPE_CHECKING:  # provided by Booting

        async def boot_artifacts(self, manifest: Manifest, origin: str) -> BootArtifacts: ...

    def plugin_schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) every manifest is validated against."""
        return manifest_schema()

    async def list_plugins(self) -> list[Plugin]:
        return await self.store.list_plugins()

    async def get_plugin(self, name: str) -> Plugin:
        return await self.store.get_plugin(validate_name(name, "plugin"))

    async def enable_plugin(self, name: str) -> Plugin:
        plugin = await self.store.set_plugin_enabled(validate_name(name, "plugin"), True)
        self.plugins_changed.set()
        log.info("plugin %s enabled", name)
        return plugin

    async def disable_plugin(self, name: str) -> Plugin:
        """New VMs can no longer use it; existing VMs keep running and can restart."""
        plugin = await self.store.set_plugin_enabled(validate_name(name, "plugin"), False)
        self.plugins_changed.set()
        log.info("plugin %s disabled", name)
        return plugin

    async def remove_plugin(self, name: str) -> None:
        """Remove the plugin; refused (Conflict) while any VM uses it."""
        async with self.faults.verb("plugin-remove"):
            await self.store.delete_plugin(validate_name(name, "plugin"))
            self.faults.at("removed")
        await self.prune_artifacts()
        # Last: the D-Bus front-end drops the plugin's object when it sees this, and a Remove
        # called on that object must be answered first.
        self.plugins_changed.set()
        log.info("plugin %s removed", name)

    async def prune_artifacts(self) -> None:
        """Drop cached artifacts that neither an installed plugin nor a VM boots from any more,
        and downloads a killed daemon left half-done."""
        manifests = [p.manifest_json for p in await self.store.list_plugins()]
        manifests += [vm.manifest_json for vm in await self.store.list_vms() if vm.manifest_json]
        try:
            keep = {
                artifact.checksum
                for text in manifests
                for artifact in _artifacts(validate_document(json.loads(text)))
            }
        except (VolantError, ValueError) as exc:
            # What is needed is unknown: keep everything rather than guess.
            log.warning("not pruning the artifact cache: a stored manifest does not parse: %s", exc)
            return
        removed = await self.artifacts.prune(keep)
        if removed:
            log.info("removed %d cached files no plugin or VM uses", removed)

    async def install_plugin(self, source: PluginSource, *, replace: bool = False) -> Plugin:
        """Verify, validate and record a plugin, caching its artifacts; nothing is recorded
        when any step fails. replace upgrades an installed plugin of the same name in place."""
        async with self.faults.verb("plugin-install"):
            return await self._install(source, replace)

    async def _install(self, source: PluginSource, replace: bool) -> Plugin:
        """install_plugin's work; a build (volant.engine.builds) calls it inside its own verb,
        so these boundaries are plugin-build's there."""
        text, signature, origin = await self._read_source(source)
        cfg = self.config
        signer = verify(
            text,
            signature,
            cfg.plugins_trusted_keys_dir,
            required=cfg.plugins_require_signature,
        )
        manifest = parse_manifest(text)
        self.faults.at("verified")
        try:
            await self.boot_artifacts(manifest, origin)
        except VolantError:
            # A rootfs that verified but is not a whole file system was cached already.
            await self.prune_artifacts()
            raise
        self.faults.at("artifacts-cached")
        plugin = await self.store.add_plugin(
            manifest.canonical_json,
            manifest.name,
            manifest.version,
            manifest.runtime,
            manifest.digest,
            signer=signer or "",
            source=origin,
            replace=replace,
        )
        self.plugins_changed.set()
        log.info(
            "plugin %s %s installed (%s, %s)",
            plugin.name,
            plugin.version,
            plugin.digest,
            f"signed by {signer}" if signer else "unsigned",
        )
        return plugin

    async def plugin_manifest(self, name: str) -> tuple[Plugin, Manifest]:
        """The installed plugin and its manifest, parsed again from what the store holds."""
        plugin = await self.get_plugin(name)
        return plugin, validate_document(json.loads(plugin.manifest_json))

    async def _read_source(self, source: PluginSource) -> tuple[bytes, str | None, str]:
        """(manifest bytes, signature, origin) of an install request."""
        if bool(source.text) == bool(source.url):
            raise InvalidArgument("give either the manifest text or a URL to fetch it from")
        if source.text:
            if len(source.text) > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            return source.text, source.signature, source.origin
        timeout = self.config.plugins_download_timeout
        text = await fetch_bytes(source.url, max_bytes=MAX_MANIFEST_BYTES, timeout=timeout)
        signature = source.signature
        if signature is None:
            signature = await _fetch_optional(_signature_url(source.url), timeout)
        return text, signature, source.url


def _artifacts(manifest: Manifest) -> list[Artifact]:
    return [a for a in (manifest.kernel, manifest.initramfs, manifest.rootfs) if a is not None]


def _signature_url(url: str) -> str:
    """<manifest URL>.sig, with any query string kept after the path."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path + ".sig", fragment=""))


async def _fetch_optional(url: str, timeout: float) -> str | None:
    """The detached signature next to a manifest URL, None when there is none."""
    try:
        raw = await fetch_bytes(url, max_bytes=MAX_SIGNATURE_BYTES, timeout=timeout)
    except DownloadFailed as exc:
        log.info("no signature at %s: %s", url, exc)
        return None
    return raw.decode("ascii", errors="replace").strip()
