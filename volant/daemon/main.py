"""volantd entry point: build config, store, backends, engine and servers; run until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from volant.api import mcp
from volant.api.rest import Mount, RestServer, make_app
from volant.config import Config, config_files, load_config
from volant.config.docs import defaults_yaml
from volant.daemon.bus import serve_dbus
from volant.daemon.lifecycle import status_lines, stop, watchdog
from volant.daemon.logs import setup_logging
from volant.daemon.notify import Notifier
from volant.engine import Engine, Faults
from volant.engine.ledger import Ledger
from volant.engine.volumes import Volumes
from volant.host import MachineRegistry, make_supervisor
from volant.host.builds import make_build_runner
from volant.host.helpers import make_helpers
from volant.model import StateCorrupt, VolantError
from volant.network import (
    HostNetwork,
    PortRules,
    forwarding_enabled,
    mac_for,
    warn_without_bridge_table,
)
from volant.plugins.artifacts import ArtifactCache
from volant.runtime import select_driver
from volant.runtime.passthrough import AgentPassthrough
from volant.storage import DiskFiles
from volant.storage.volumes import VolumeDir
from volant.store import SqliteStore

log = logging.getLogger("volantd")

# sysexits' EX_DATAERR: the state database is damaged. volantd.service does not restart on it
# (RestartPreventExitStatus=): a restart would only fail the same way until the operator acts.
EXIT_STATE_CORRUPT = 65


def _version() -> str:
    try:
        return version("volant")
    except PackageNotFoundError:
        return "0+unknown"


@contextlib.asynccontextmanager
async def build_engine(config: Config) -> AsyncIterator[Engine]:
    """Wire the layers together; tear them down in reverse on the way out."""
    driver = select_driver(
        config.runtime_hypervisor,
        accel=config.runtime_accel,
        machine=config.runtime_machine,
    )
    subnet = IPv4Network(config.network_subnet)
    network = HostNetwork(
        bridge=config.network_bridge,
        address=IPv4Interface(f"{config.network_host_ip}/{subnet.prefixlen}"),
    )
    supervisor = make_supervisor(config.host_supervisor, owner=str(config.state_dir))
    log.info(
        "volantd %s: hypervisor %s, supervisor %s, state %s",
        _version(),
        driver.kind,
        supervisor.kind,
        config.state_dir,
    )
    artifacts = ArtifactCache(
        config.artifacts_dir,
        max_bytes=config.plugins_max_artifact_mb * 1024 * 1024,
        timeout=config.plugins_download_timeout,
    )
    store = await SqliteStore.open(config.db_path)
    machines = MachineRegistry() if supervisor.kind == "systemd" else None
    try:
        if machines is not None:
            await machines.open()
        async with AgentPassthrough() as guest:
            faults = Faults.from_environment()
            volumes = Volumes(store.volumes, Ledger(store), VolumeDir(config.volumes_dir), faults)
            engine = Engine(
                config,
                store,
                driver,
                supervisor,
                network,
                artifacts=artifacts,
                disks=DiskFiles(),
                guest=guest,
                proxy=guest,
                mac_for=mac_for,
                version=_version(),
                machines=machines,
                faults=faults,
                volumes=volumes,
                builder=make_build_runner(supervisor.kind, owner=str(config.state_dir)),
                port_rules=PortRules(config.network_bridge, subnet),
                helpers=make_helpers(supervisor.kind, owner=str(config.state_dir)),
            )
            await engine.start()
            if not forwarding_enabled():
                log.warning(
                    "net.ipv4.ip_forward is 0: guests cannot reach other networks "
                    "(run `volar setup`)"
                )
            await warn_without_bridge_table()
            try:
                yield engine
            finally:
                await engine.close()
    finally:
        if machines is not None:
            await machines.close()
        await supervisor.close()
        await store.close()


async def serve(config: Config) -> None:
    notifier = Notifier()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with (
        watchdog(notifier),
        build_engine(config) as engine,
        serve_dbus(config, engine) as authorizer,
    ):
        endpoint = mcp.McpEndpoint(engine, authorizer)
        mount = Mount(
            path=mcp.PATH,
            handler=endpoint.handle,
            summary="Model Context Protocol (Streamable HTTP, JSON-RPC 2.0) for AI agents",
            tag="mcp",
            methods=mcp.METHODS,
            media=mcp.MEDIA,
            cleanup_ctx=endpoint.cleanup_ctx,
        )
        app = make_app(engine, authorizer, max_body=config.api_max_body_kb * 1024, mounts=[mount])
        async with RestServer(
            app,
            listen=config.api_listen,
            socket_path=config.api_socket,
            socket_group=config.api_socket_group,
        ):
            vms = await engine.list_vms()
            notifier.ready(f"Serving; {len(vms)} VMs")
            log.info("ready")
            async with status_lines(engine, notifier):
                await stopping.wait()
            await stop(engine, notifier)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volantd", description="Volant microVM daemon")
    parser.add_argument(
        "--config", type=Path, action="append", help="config file (repeatable; replaces defaults)"
    )
    parser.add_argument(
        "--print-defaults",
        action="store_true",
        help="print every setting with its default and help, as a commented volantd.yaml, and exit",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="read and check the configuration (files, drop-ins, VOLANT_* variables) and exit",
    )
    parser.add_argument("--version", action="version", version=f"volantd {_version()}")
    args = parser.parse_args(argv)
    if args.print_defaults:
        sys.stdout.write(defaults_yaml())
        return
    try:
        config = load_config(args.config)
    except VolantError as exc:
        print(f"volantd: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from exc
    if args.check_config:
        files = ", ".join(str(path) for path in config_files(args.config)) or "defaults only"
        print(f"volantd: configuration OK ({files})")
        return
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except VolantError as exc:
        log.error("volantd failed: %s%s", exc.message, f"\nhint: {exc.hint}" if exc.hint else "")
        raise SystemExit(EXIT_STATE_CORRUPT if isinstance(exc, StateCorrupt) else 1) from exc


if __name__ == "__main__":
    main()
