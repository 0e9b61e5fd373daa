"""The engine: the only code that changes state. One method per verb."""

from __future__ import annotations

import asyncio
import logging
import time
from ipaddress import IPv4Address, IPv4Network

from volant.config import Config
from volant.engine.agentports import Guest, GuestProxy
from volant.engine.boot import Booting, new_agent_secret
from volant.engine.buildrun import BuildRunner
from volant.engine.builds import build_service
from volant.engine.console import Console, ConsoleVerbs
from volant.engine.dns import Dns, plan_of
from volant.engine.ending import failure_reason
from volant.engine.events import EventBus
from volant.engine.exec import exec_service
from volant.engine.faults import Faults
from volant.engine.files import Files
from volant.engine.guest import GuestVerbs, health_budget, reachable_agent, vm_manifest
from volant.engine.hoststeps import HostSteps
from volant.engine.journal import EventVerbs
from volant.engine.leases import Leases
from volant.engine.ledger import Ledger
from volant.engine.passthrough import Passthrough
from volant.engine.plugins import PluginVerbs
from volant.engine.ports import (
    Artifacts,
    Disks,
    Helpers,
    HypervisorDriver,
    MacFor,
    Machines,
    Network,
    Store,
    Supervisor,
)
from volant.engine.published import PortFirewall, Published
from volant.engine.repair import Paths, Repair
from volant.engine.system import SystemVerbs
from volant.engine.telemetry import Telemetry
from volant.engine.undo import Undo
from volant.engine.vmdisks import VMDisks
from volant.engine.volumes import Volumes
from volant.engine.watch import Live, Watching, wait_event, wait_ready
from volant.model import (
    EventType,
    HypervisorFailed,
    InvalidArgument,
    InvalidState,
    Manifest,
    NetworkMode,
    Usage,
    VirtualMachine,
    VMQuery,
    VMSpec,
    VMStatus,
    VolantError,
)
from volant.model.validate import PREFIX_RE, validate_name

log = logging.getLogger(__name__)

STARTABLE = (VMStatus.STOPPED, VMStatus.CRASHED, VMStatus.ERROR)
STOPPABLE = (VMStatus.RUNNING, VMStatus.STARTING)
KILL_WAIT = 10.0


class Engine(Booting, Watching, EventVerbs, PluginVerbs, GuestVerbs, SystemVerbs, ConsoleVerbs):
    """Creates, starts, stops and deletes VMs, keeping store, host and network consistent."""

    def __init__(
        self,
        config: Config,
        store: Store,
        driver: HypervisorDriver,
        supervisor: Supervisor,
        network: Network,
        *,
        artifacts: Artifacts,
        disks: Disks,
        guest: Guest,
        volumes: Volumes,
        mac_for: MacFor,
        version: str = "",
        machines: Machines | None = None,
        faults: Faults | None = None,
        builder: BuildRunner | None = None,
        port_rules: PortFirewall | None = None,
        helpers: Helpers | None = None,
        proxy: GuestProxy | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.driver = driver
        self.supervisor = supervisor
        self.network = network
        self.artifacts = artifacts
        self.guest = guest
        self.volumes = volumes
        self.files = Files(config, store, guest)
        self.machines = machines
        self.faults = faults or Faults()
        self.ledger = Ledger(store)
        self.published = Published(self.ledger, port_rules, self._emit_repair)
        self.host = HostSteps(self.ledger, supervisor, network, machines, self.published)
        self.disks = VMDisks(self.ledger, disks, config.disks_dir, config.vm_disk_size_mb)
        paths = Paths(config.runtime_dir / "vms", config.state_dir / "consoles", config.disks_dir)
        self.repair = Repair(
            store, self.host, self.disks, paths, self._emit_repair, volumes, self.published
        )
        self.bus = EventBus()
        self.execs = exec_service(config, store, guest, self.bus)
        self.telemetry = Telemetry(version)
        self.plugins_changed = asyncio.Event()
        self.builds = build_service(
            config, store, self.ledger, self.bus, self.faults, builder, self._install
        )
        # A dhcp guest's ports are published once its address is known.
        self.leases = Leases(store, self.ledger, plan_of(config), self._emit, self.published.open)
        self.dns = Dns(config, store, self.ledger, helpers, self.leases, self._emit_repair)
        self.passthrough = Passthrough(config, store, proxy, self.vm_openapi)
        self._mac_for = mac_for
        self._version = version
        self._subnet = IPv4Network(config.network_subnet)
        self._gateway = IPv4Address(config.network_host_ip)
        self._locks: dict[str, asyncio.Lock] = {}
        self._live: dict[str, Live] = {}
        self._consoles: dict[str, Console] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        supervisor.set_exit_callback(self._on_exit)

    # -- lifecycle of the engine itself -------------------------------------------------------

    async def start(self) -> None:
        """Seed the IP pool, prepare the bridge, reconcile VMs left by an earlier daemon and
        start keeping the event log within its retention."""
        total = await self.store.ensure_pool(self._subnet, self.dns.not_pooled())
        log.info("IP pool %s: %d addresses", self._subnet, total)
        if self.config.network_manage_bridge:
            await self.network.ensure_bridge()
        await self.builds.repair()  # first: Repair knows VM resources only
        await self._reconcile()
        await self.dns.start()
        await self.prune_artifacts()
        self._spawn(self._keep_events_trimmed())

    async def close(self) -> None:
        """Stop watching; VMs keep running (their scopes outlive the daemon); builds do not."""
        await self.builds.close()
        await self.dns.close()
        await self._cancel_tasks()
        self.bus.close()

    # -- read verbs ---------------------------------------------------------------------------

    async def list_vms(self) -> list[VirtualMachine]:
        return await self.store.list_vms()

    async def query_vms(self, query: VMQuery) -> tuple[list[VirtualMachine], int]:
        """A filtered, ordered window of the VMs and how many match in all."""
        if not PREFIX_RE.fullmatch(query.prefix):
            raise InvalidArgument(
                f"name prefix {query.prefix!r} has characters no VM name has", field="prefix"
            )
        return await self.store.query_vms(query)

    async def get_vm(self, name: str) -> VirtualMachine:
        return await self.store.get_vm(validate_name(name))

    async def vm_usage(self, name: str) -> Usage:
        """Its hypervisor's CPU and memory (None: unknown, not running) and its disk's space."""
        vm = await self.store.get_vm(validate_name(name))
        usage = await self.supervisor.usage(vm.name) if vm.status.is_active else Usage()
        return await self.disks.usage(vm.name, usage)

    # -- write verbs --------------------------------------------------------------------------

    async def create_vm(self, spec: VMSpec) -> VirtualMachine:
        """Lease, persist, plumb and launch a VM; any failure undoes every step done so far.

        The VM runs its plugin's manifest as it is now. It is `running` once the hypervisor
        answers, or, when the manifest has a health check, once the agent reports the workload
        healthy (until then `starting`; `error` with the reason when that never happens).
        """
        started = time.monotonic()
        self.validate_spec(spec)  # bad input fails before any lookup; defaults come below
        plugin, manifest = await self.plugin_manifest(spec.plugin)
        if not plugin.enabled:
            raise InvalidState(
                f"plugin {plugin.name!r} is disabled",
                hint=f"`volar plugins enable {plugin.name}`",
                field="plugin",
            )
        if manifest.network is NetworkMode.DHCP:
            self.dns.require_dhcp()
        spec = self.validate_spec(spec, manifest)
        await self.published.check(spec.name, spec.publish or ())
        # Fail before anything exists when an artifact is missing or corrupt.
        await self.boot_artifacts(manifest, plugin.source)
        async with self._lock(spec.name), self.faults.verb("create"):
            vm = await self.store.create_vm(
                spec,
                runtime=self.driver.kind,
                unit="",
                mac_for=self._mac_for,
                lease_ip=manifest.network is NetworkMode.BRIDGED,
                manifest_json=plugin.manifest_json,
                agent_secret=new_agent_secret(),
            )
            undo = Undo()
            undo.push("delete VM row and lease", lambda: self.store.delete_vm(spec.name))
            run_dir, console_log = (
                self.config.vm_run_dir(vm.name),
                self.config.vm_console_log(vm.name),
            )
            undo.push("remove files", lambda: self.host.remove_files(run_dir, console_log))
            undo.push("remove disk", lambda: self.disks.remove(spec.name))
            announced = False
            try:
                cmdline = self._kernel_cmdline(vm, manifest, spec.kernel_args)
                vm = await self.store.update_vm(vm.name, kernel_cmdline=cmdline)
                await self._emit(EventType.VM_CREATED, vm)
                announced = True
                self.faults.at("recorded")
                vm = await self._launch(vm, undo)
                self.telemetry.create_seconds.observe(time.monotonic() - started)
                return vm
            except BaseException as exc:
                await undo.run()
                if announced:
                    await self._emit_gone(vm, exc)
                raise

    async def start_vm(self, name: str) -> VirtualMachine:
        async with self._lock(validate_name(name)), self.faults.verb("start"):
            vm = await self.store.get_vm(name)
            if vm.status not in STARTABLE:
                raise InvalidState(f"VM {name!r} is {vm.status}; only a stopped VM can start")
            await self.published.check(name, vm.publish)
            undo = Undo()
            try:
                return await self._launch(vm, undo)
            except BaseException as exc:
                await undo.run()
                reason = failure_reason(exc)
                vm = await self.store.update_vm(
                    name, status=VMStatus.ERROR, pid=None, status_reason=reason
                )
                await self._emit(EventType.VM_ERROR, vm, reason=reason)
                raise

    async def stop_vm(self, name: str) -> VirtualMachine:
        """Power the guest off gracefully; kill it after runtime.stop_timeout."""
        async with self._lock(validate_name(name)), self.faults.verb("stop"):
            vm = await self.store.get_vm(name)
            if vm.status not in STOPPABLE:
                raise InvalidState(f"VM {name!r} is {vm.status}; only a running VM can stop")
            vm = await self.store.update_vm(name, status=VMStatus.STOPPING)
            self.faults.at("stopping")
            return await self._finish_stop(vm)

    async def _resume_stop(self, vm: VirtualMachine) -> None:
        """Finish a stop an earlier daemon was killed in the middle of."""
        async with self._lock(vm.name), self.faults.verb("stop"):
            try:
                await self._finish_stop(vm, reason="stop finished after a volantd restart")
            except Exception:
                log.exception("could not finish stopping VM %s", vm.name, extra={"VM": vm.name})

    async def _finish_stop(self, vm: VirtualMachine, reason: str = "") -> VirtualMachine:
        """stopping -> stopped: power the guest off (kill it after runtime.stop_timeout)."""
        await self._terminate(vm, graceful=True)
        self.faults.at("ended")
        vm = await self.store.update_vm(vm.name, status=VMStatus.STOPPED, pid=None)
        await self._emit(EventType.VM_STOPPED, vm, **({"reason": reason} if reason else {}))
        self.faults.at("stopped")
        return vm

    async def restart_vm(self, name: str) -> VirtualMachine:
        """Stop the VM if it is running, then start it again."""
        async with self.faults.verb("restart"):
            vm = await self.get_vm(name)
            if vm.status == VMStatus.RUNNING:
                await self.stop_vm(name)
            return await self.start_vm(name)

    async def delete_vm(self, name: str) -> None:
        """End the hypervisor if any, remove the tap, the row, its lease and its files.

        A VM with writable volumes is shut down cleanly (they outlive it: their file systems and
        its workload's last writes stay clean for the next VM); any other is killed."""
        async with self._lock(validate_name(name)), self.faults.verb("delete"):
            vm, cfg = await self.store.get_vm(name), self.config
            mounts = await self.volumes.vm_volumes(name)
            await self._terminate(vm, graceful=any(not m.read_only for m in mounts))
            self.faults.at("ended")
            await self.dns.release(vm)
            self.faults.at("lease-released")
            await self.host.remove_files(cfg.vm_run_dir(name), cfg.vm_console_log(name))
            await self.disks.remove(name)
            self.faults.at("files-removed")
            await self.store.delete_vm(name)
            self.faults.at("deleted")
            await self._emit(EventType.VM_DELETED, vm)
        self._locks.pop(name, None)
        self.leases.forget(name)

    # -- steps ----------------------------------------------------------------------------------

    async def _launch(self, vm: VirtualMachine, undo: Undo) -> VirtualMachine:
        """tap, starting, hypervisor in its scope, API answering, running (or the health gate).

        Each host change is recorded before and after (the ledger) and has its undo.
        """
        vm = await self._ensure_agent_secret(vm)
        spec, manifest = await self._boot_files(vm)
        tap, name = spec.tap, vm.name  # no tap: a network-less VM (network.mode vsock)
        vm = await self.store.update_vm(name, status=VMStatus.STARTING, status_reason="")
        await self._emit(EventType.VM_STARTING, vm)
        self.faults.at("starting")
        if tap is not None:
            await self.host.plumb_tap(name, tap, isolated=vm.isolated)
            undo.push(f"delete tap {tap}", lambda: self.host.unplumb_tap(name))
        self.faults.at("tap-created")
        await self.disks.ensure(name, spec.disks)
        self.faults.at("disk-ready")
        await self.host.prepare_files(vm, spec)
        live = Live(hv=self.driver.for_vm(spec))
        self._live[name] = live
        undo.push("forget process", lambda: self._forget(name, live))
        launched = await self.host.launch(vm, live.hv.command(), spec)
        live.pid = launched.pid
        undo.push("forget scope", lambda: self.host.end_scope(name))
        undo.push("kill hypervisor", lambda: self._kill(name, live))
        self.faults.at("launched")
        log_file = self.config.vm_run_dir(name) / "hypervisor.log"
        await wait_ready(name, live, self.config.runtime_ready_timeout, log_file)
        self.faults.at("ready")
        live.launching = False
        self._follow(live)
        await self.host.register_machine(name, launched.pid, tap)
        undo.push("unregister machine", lambda: self.host.unregister_machine(name))
        await self.published.open(vm)
        undo.push("close published ports", lambda: self.published.close(name))
        self.faults.at("published")
        # Until the last write below the launch is undone if one fails (a full disk): the kill
        # sets stop_requested, so neither the exit watcher nor the health gate acts on it.
        if self._gate_health(vm, live, manifest):
            vm = await self.store.update_vm(name, pid=launched.pid, unit=launched.unit)
            undo.clear()
            return vm
        vm = await self.store.update_vm(
            name, status=VMStatus.RUNNING, pid=launched.pid, unit=launched.unit
        )
        log.info(
            "VM %s running (pid %d)", name, launched.pid, extra={"VM": name, "UNIT": launched.unit}
        )
        await self._emit(EventType.VM_RUNNING, vm)
        undo.clear()
        self.faults.at("running")
        return vm

    def _resume_health_gate(self, vm: VirtualMachine, live: Live) -> bool:
        return self._gate_health(vm, live, vm_manifest(vm) if vm.manifest_json else None)

    def _gate_health(self, vm: VirtualMachine, live: Live, manifest: Manifest | None) -> bool:
        """Start the health gate when the manifest has a health check; False when it has none
        (the VM is running as soon as its hypervisor is)."""
        budget = health_budget(self.config, manifest) if manifest is not None else None
        dhcp = manifest is not None and manifest.network is NetworkMode.DHCP
        if budget is None or not (reachable_agent(vm, self.config) or dhcp):
            return False
        log.info("VM %s: waiting for its workload to be healthy", vm.name, extra={"VM": vm.name})
        live.health = self._spawn(self._health_gate(vm, live, budget))
        return True

    async def _health_gate(self, vm: VirtualMachine, live: Live, budget: float) -> None:
        """starting -> running once the agent reports the workload healthy; error (hypervisor
        killed, reason recorded) when it does not within budget seconds."""
        failure: VolantError | None = None
        try:
            started = time.monotonic()
            vm = await self.leases.wait_address(vm, budget)  # at once unless dhcp
            budget -= time.monotonic() - started
            agent = reachable_agent(vm, self.config)
            assert agent is not None
            await self.guest.wait_healthy(agent, budget)
        except VolantError as exc:
            failure = exc
        async with self._lock(vm.name):
            if self._live.get(vm.name) is not live or live.stop_requested:
                return  # stopped, deleted or crashed meanwhile: that verb had the last word
            if failure is None:
                vm = await self.store.update_vm(vm.name, status=VMStatus.RUNNING)
                log.info("VM %s running: workload healthy", vm.name, extra={"VM": vm.name})
                await self._emit(EventType.VM_RUNNING, vm)
                return
            reason = failure_reason(failure)
            log.error("VM %s failed its health gate: %s", vm.name, reason, extra={"VM": vm.name})
            await self._terminate(vm, graceful=False)
            vm = await self.store.update_vm(
                vm.name, status=VMStatus.ERROR, pid=None, status_reason=reason
            )
            await self._emit(EventType.VM_ERROR, vm, reason=reason)

    async def _forget(self, name: str, live: Live) -> None:
        live.cancel_health()
        if live.follower is not None:  # and with it a network-less VM's agent relay
            live.follower.cancel()
        if self._live.get(name) is live:
            del self._live[name]

    async def _kill(self, name: str, live: Live) -> None:
        live.stop_requested = True
        if not live.exited.is_set():
            await self.supervisor.kill(name)
            await wait_event(live.exited, KILL_WAIT)

    async def _terminate(self, vm: VirtualMachine, *, graceful: bool) -> None:
        """End the VM's hypervisor and remove its machine and tap.

        Without a process this daemon watches, the scope is still killed by its unit name,
        whatever pid the row holds: a killed daemon may have left one behind.
        """
        live = self._live.get(vm.name)
        if live is not None:
            live.stop_requested = True
            if not live.exited.is_set():
                timeout = self.config.runtime_stop_timeout if graceful else 5.0
                try:
                    await live.hv.shutdown(graceful=graceful, timeout=timeout)
                except HypervisorFailed as exc:
                    log.warning("shutdown of %s through its API failed: %s", vm.name, exc)
                if not await wait_event(live.exited, 5.0):
                    await self._kill(vm.name, live)
            await self._forget(vm.name, live)
        await self.host.unplumb(vm.name)
