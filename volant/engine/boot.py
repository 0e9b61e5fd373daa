"""How a VM boots: its resources, kernel command line, boot files and launch spec.

`Booting` is a base of `Engine`. A VM boots the host's agent image with the plugin's own
initramfs appended, or with the plugin's rootfs disk and its own writable disk attached
(volant.engine.vmdisks), and its manifest on the command line when the line stays within the x86
limit of 2047 characters. Every VM also gets a read-only config disk with its manifest and its
agent secret: the secret never goes on the command line, which every local user can read in
QEMU's argv (/proc/<pid>/cmdline).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from volant.config import Config
from volant.engine.guest import networkless, vm_manifest
from volant.engine.ports import Artifacts, HypervisorDriver, Network, Store
from volant.engine.vmdisks import VMDisks
from volant.engine.volumes import Volumes
from volant.model import (
    InvalidArgument,
    LaunchSpec,
    Manifest,
    NetworkMode,
    PortMapping,
    Unavailable,
    VirtualMachine,
    VMSpec,
    validate_mounts,
    validate_publish,
)
from volant.model.validate import validate_kernel_args, validate_name, validate_range
from volant.runtime.cmdline import build_cmdline, encode_manifest

log = logging.getLogger("volant.engine.engine")

CONFIG_DISK = "config.img"
SECRET_BYTES = 32
FIRST_CID = 3


def new_agent_secret() -> str:
    """A fresh agent secret: 32 random bytes, base64url."""
    return secrets.token_urlsafe(SECRET_BYTES)


@dataclass(frozen=True)
class BootArtifacts:
    """A plugin's boot files as verified cached paths (initramfs or rootfs, not both)."""

    kernel: Path
    initramfs: Path | None = None
    rootfs: Path | None = None


def _publish(spec: VMSpec, manifest: Manifest) -> tuple[PortMapping, ...]:
    publish = manifest.publish if spec.publish is None else validate_publish(spec.publish)
    if publish and manifest.network is NetworkMode.VSOCK:
        raise InvalidArgument(
            f"plugin {spec.plugin!r} runs its VMs without a network card (network mode vsock), "
            "so they have no port to publish",
            hint="leave out --publish, or use a plugin in bridged or dhcp mode",
            field="publish",
        )
    return publish


class Booting:
    """Resources, command line and boot files of a VM; a base of Engine."""

    config: Config
    disks: VMDisks
    store: Store
    driver: HypervisorDriver
    network: Network
    artifacts: Artifacts
    volumes: Volumes
    _subnet: IPv4Network
    _gateway: IPv4Address

    async def boot_artifacts(self, manifest: Manifest, origin: str) -> BootArtifacts:
        """The kernel (the host's default unless the manifest names one), the plugin's
        initramfs or rootfs, as verified cached files; a rootfs must also be a whole file
        system of its format."""
        kernel = self.config.runtime_kernel
        if manifest.kernel is not None:
            kernel = await self.artifacts.ensure(manifest.kernel, base=origin, field="kernel")
        initramfs = rootfs = None
        if manifest.initramfs is not None:
            initramfs = await self.artifacts.ensure(
                manifest.initramfs, base=origin, field="initramfs"
            )
        if manifest.rootfs is not None:
            rootfs = await self.artifacts.ensure(manifest.rootfs, base=origin, field="rootfs")
            await self.disks.check_rootfs(rootfs, manifest)
        return BootArtifacts(kernel, initramfs, rootfs)

    def validate_spec(self, spec: VMSpec, manifest: Manifest | None = None) -> VMSpec:
        """Domain checks every front-end shares; raises InvalidArgument naming the field.

        CPUs and memory the caller left out come from the manifest's resources, then from the
        host's defaults; either way the host's vm.* limits apply.
        """
        cfg = self.config
        validate_name(spec.name)
        if not spec.plugin:
            raise InvalidArgument(
                "a VM needs a plugin", hint="`volar plugins list` shows them", field="plugin"
            )
        validate_name(spec.plugin, "plugin")
        resources = manifest.resources if manifest is not None else None
        cpus = spec.cpu_cores
        if cpus is None:
            cpus = resources.cpu_cores if resources else cfg.vm_default_cpus
        memory = spec.memory_mb
        if memory is None:
            memory = resources.memory_mb if resources else cfg.vm_default_memory_mb
        validate_range("cpu_cores", cpus, 1, cfg.vm_max_cpus)
        validate_range("memory_mb", memory, cfg.vm_min_memory_mb, cfg.vm_max_memory_mb)
        return replace(
            spec,
            cpu_cores=cpus,
            memory_mb=memory,
            kernel_args=validate_kernel_args(spec.kernel_args),
            # The plugin's network.isolated holds for all its VMs; a VM may ask on its own.
            isolated=spec.isolated or (manifest is not None and manifest.isolated),
            # Likewise its rootfs.ephemeral: the VM gets no disk, and says so.
            ephemeral=spec.ephemeral
            or (manifest is not None and manifest.rootfs is not None and manifest.rootfs.ephemeral),
            # Once the plugin is known: an unknown plugin is the first thing to hear about
            # (the create's schema cannot say that one volume comes once only).
            volumes=validate_mounts(spec.volumes) if manifest is not None else spec.volumes,
            # The VM's own list replaces the plugin's network.publish ([] publishes nothing);
            # overlaps within it are checked once the plugin is known, as volumes are.
            publish=spec.publish if manifest is None else _publish(spec, manifest),
        )

    def _kernel_cmdline(self, vm: VirtualMachine, manifest: Manifest, extra: str) -> str:
        """The guest's command line, with the manifest on it when it fits in 2047 characters;
        otherwise without: the config disk holds it either way."""

        def line(encoded: str | None) -> str:
            return build_cmdline(
                name=vm.name,
                ip=vm.ip_address,
                gateway=str(self._gateway),
                netmask=str(self._subnet.netmask),
                mode=manifest.network,
                runtime=manifest.runtime,
                plugin=vm.plugin,
                manifest=encoded,
                extra=extra,
                hypervisor_extras=self.driver.kernel_extras(),
                console_shell=self.config.runtime_console_shell,
                domain=self.config.network_domain if self.config.network_dns else "",
            )

        try:
            return line(encode_manifest(json.loads(vm.manifest_json)))
        except InvalidArgument:
            cmdline = line(None)  # still too long: the caller's kernel_args are to blame
            log.info(
                "manifest of VM %s does not fit on the kernel command line; "
                "the agent reads it from the config disk",
                vm.name,
                extra={"VM": vm.name},
            )
            return cmdline

    async def _ensure_agent_secret(self, vm: VirtualMachine) -> VirtualMachine:
        """vm, with an agent secret made now when it was created before VMs had one."""
        if vm.agent_secret:
            return vm
        log.info("VM %s gets its first agent secret", vm.name, extra={"VM": vm.name})
        return await self.store.update_vm(vm.name, agent_secret=new_agent_secret())

    async def _boot_files(self, vm: VirtualMachine) -> tuple[LaunchSpec, Manifest | None]:
        """The launch spec with the plugin's kernel, the agent image plus the plugin's own
        initramfs, and the config disk; and the VM's manifest (None for a VM created before VMs
        carried one)."""
        spec = self.launch_spec(vm)
        # The VM's volumes (claimed for it, formatted on first use) after the config disk.
        disks, mounts = await self.volumes.attach(vm.name)
        spec = replace(
            spec,
            config_disk=spec.run_dir / CONFIG_DISK,
            disks=(*spec.disks, *disks),
            mounts=(*spec.mounts, *mounts),
        )
        if not vm.manifest_json:
            return spec, None  # boot the host image as it is
        manifest = vm_manifest(vm)
        plugin = await self.store.get_plugin(vm.plugin)
        boot = await self.boot_artifacts(manifest, plugin.source)
        kernel, extra, initramfs = boot.kernel, boot.initramfs, self.config.runtime_initramfs
        if boot.rootfs is not None:
            disks, root = self.disks.layout(vm, manifest, boot.rootfs)
            spec = replace(spec, disks=(*disks, *spec.disks), root=root)
        if extra is not None:
            try:
                initramfs = await self.artifacts.concatenated(initramfs, extra)
            except OSError as exc:
                raise Unavailable(
                    f"cannot read the guest image {initramfs}: {exc.strerror}",
                    hint="check runtime.initramfs in volantd.yaml",
                ) from exc
        return replace(spec, kernel=kernel, initramfs=initramfs), manifest

    def launch_spec(self, vm: VirtualMachine) -> LaunchSpec:
        """A network-less VM gets no tap but an agent channel, its vsock cid made unique
        by the VM's row id (cids 0-2 are reserved)."""
        cfg = self.config
        quiet = networkless(vm)
        return LaunchSpec(
            name=vm.name,
            cpus=vm.cpu_cores,
            memory_mb=vm.memory_mb,
            kernel=cfg.runtime_kernel,
            initramfs=cfg.runtime_initramfs,
            cmdline=vm.kernel_cmdline,
            mac=vm.mac,
            run_dir=cfg.vm_run_dir(vm.name),
            console_log=cfg.vm_console_log(vm.name),
            tap=None if quiet else self.network.tap_name(vm.name),
            start_paused=cfg.runtime_start_paused,
            agent_channel=self.driver.agent_channel(FIRST_CID + vm.id) if quiet else None,
        )
