"""Agent entry point: load the manifest, supervise the workload, serve HTTP until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from volant_agent.address import listen_address
from volant_agent.app import Agent, make_handler
from volant_agent.files import streams_files
from volant_agent.http import MAX_HEAD, connection_handler
from volant_agent.logs import LogBuffer
from volant_agent.manifest import block_devices, load
from volant_agent.passthrough import streams_body
from volant_agent.rootfs import Assembly, prepare
from volant_agent.serialmux import find_port, serve_port
from volant_agent.view import attach_view
from volant_agent.workload import Supervisor

log = logging.getLogger("volant_agent")

PORT = 8080


def init_poweroff() -> None:
    """Ask PID 1 (volant-init) for a clean power-off: it traps SIGUSR2, like busybox poweroff."""
    os.kill(1, signal.SIGUSR2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="volant-agent", description=__doc__)
    parser.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"))
    parser.add_argument(
        "--disk", type=Path, action="append", default=None,
        help="config disk(s) holding the agent secret (and the manifest when the command line "
        "has none); default: /dev/vd*",
    )  # fmt: skip
    parser.add_argument(
        "--host", default=None,
        help="address to listen on (default: the guest's own, from ip= or eth0's DHCP lease)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--vsock", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--poweroff-signal-init", action=argparse.BooleanOptionalAction, default=None,
        help="POST /v1/poweroff signals PID 1 (default: only when the agent runs under it)",
    )  # fmt: skip
    parser.add_argument(
        "--files-view", action=argparse.BooleanOptionalAction, default=None,
        help="for an initramfs plugin, mount the view of this root /v1/files works in (default: "
        "only when the agent runs under PID 1, in its guest)",
    )  # fmt: skip
    return parser.parse_args(argv)


def _float_env(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def _vsock_wanted(mode: str, cmdline: str) -> bool:
    if mode == "off" or not hasattr(socket, "AF_VSOCK"):
        return False
    # In vsock mode the guest has no NIC, so volantd passes no ip=: that is the signal.
    return mode == "on" or "ip=" not in cmdline


async def _vsock_server(handler: Callable[..., object], port: int) -> asyncio.Server | None:
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, port))
    except OSError as exc:
        log.warning("vsock port %d unavailable: %s", port, exc)
        return None
    return await asyncio.start_server(handler, sock=sock, limit=MAX_HEAD)  # type: ignore[arg-type]


async def _listen(
    args: argparse.Namespace, cmdline: str, handler: Callable[..., object]
) -> tuple[str, list[asyncio.Server]]:
    """The agent's TCP server on its address (and vsock where wanted): the address, servers."""
    host = args.host if args.host is not None else await listen_address(cmdline)
    servers = [await asyncio.start_server(handler, host, args.port, limit=MAX_HEAD)]  # type: ignore[arg-type]
    if _vsock_wanted(args.vsock, cmdline):
        vsock = await _vsock_server(handler, args.port)
        if vsock is not None:
            servers.append(vsock)
    return host, servers


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    cmdline = args.cmdline.read_text(errors="replace")
    logs = LogBuffer()
    config = load(cmdline, args.disk if args.disk is not None else block_devices())
    manifest, source = config.manifest, config.source
    if config.error is not None:
        # Serve anyway, without a workload: /v1/status then tells the host what went wrong.
        log.error("manifest: %s", config.error)
        logs.append("agent", f"manifest error: {config.error}")
    log.info("manifest from %s: %s", source, manifest.name if manifest else None)
    if config.secret is None:
        log.error("no agent secret on any config disk: every request but /healthz is refused")
    supervisor = (
        Supervisor(manifest.workload, logs) if manifest and manifest.workload is not None else None
    )
    signal_init = args.poweroff_signal_init
    if signal_init is None:
        signal_init = os.getppid() == 1
    poweroff = init_poweroff if signal_init else stop.set
    agent = Agent(manifest, source, logs, supervisor, poweroff, secret=config.secret)
    agent.timeline["agent_launched"] = _float_env("VOLANT_AGENT_LAUNCHED")
    handler = connection_handler(
        make_handler(agent), streams=lambda path: streams_body(path) or streams_files(path)
    )
    host, servers = await _listen(args, cmdline, handler)
    # A network-less VM on a host without vhost-vsock: volantd's channels on a virtio-serial port.
    port = find_port()
    demux = asyncio.create_task(serve_port(port, host, args.port)) if port else None
    agent.timeline["agent_listening"] = time.monotonic()
    print(f"volant-agent: listening on {host}:{args.port}", flush=True)
    mounted: list[Assembly] = []

    async def run_workload(supervisor: Supervisor) -> None:
        # After the server is up: /v1/status can tell the host why the root failed to mount.
        assembly = await prepare(config.storage, cmdline, supervisor)
        agent.workload_prepared = True
        if assembly is not None:
            mounted.append(assembly)
            agent.timeline["root_ready"] = time.monotonic()
        # Beside the workload, not before it: the view is not on its way to healthy.
        viewing = asyncio.create_task(attach_view(agent, assembly, args.files_view, mounted))
        await supervisor.run()
        await viewing

    runner = asyncio.create_task(run_workload(supervisor)) if supervisor else None
    await stop.wait()
    if supervisor is not None and runner is not None:
        await supervisor.stop()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    for assembly in mounted:
        await assembly.unmount()  # the VM's disk is clean when PID 1 powers off
    if demux is not None:
        demux.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demux
    for server in servers:
        server.close()
    return 0


async def amain(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await serve(args, stop)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="volant-agent: %(levelname)s %(message)s"
    )
    return asyncio.run(amain(parse_args(argv)))
