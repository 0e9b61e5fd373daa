"""The table of settings and the layered loader.

Layers, later wins: /usr/lib/volant/volantd.yaml, /etc/volant/volantd.yaml, drop-ins in
/etc/volant/volantd.yaml.d/*.yaml (sorted), then VOLANT_* environment variables.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

import yaml

from volant.model import InvalidArgument

DEFAULT_FILES = (Path("/usr/lib/volant/volantd.yaml"), Path("/etc/volant/volantd.yaml"))
DROPIN_DIR = Path("/etc/volant/volantd.yaml.d")


@dataclass(frozen=True)
class Setting:
    """One configurable value: dotted name, type, default and help text."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return "VOLANT_" + self.name.replace(".", "_").upper()

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("state_dir", Path, None, "State directory (state.db, console logs). Default: "
            "$STATE_DIRECTORY under systemd, else ~/.volant."),
    Setting("runtime_dir", Path, None, "Runtime directory (sockets, per-VM dirs). Default: "
            "$RUNTIME_DIRECTORY under systemd, else /run/volant as root."),
    Setting("log_level", str, "info", "Log level.", ("debug", "info", "warning", "error")),
    Setting("api.listen", str, "127.0.0.1:7777", "TCP address of the REST API (host:port); "
            "empty disables TCP."),
    Setting("api.socket", Path, None, "Unix socket of the REST API. Default: "
            "<runtime_dir>/volantd.sock."),
    Setting("api.key", str, "", "Secret every REST caller must give (X-Volant-API-Key header or "
            "api_key query parameter); empty: no key. Not needed for /healthz."),
    Setting("api.allow_cidr", str, "", "Comma-separated networks (CIDR) TCP callers may come "
            "from; empty: any. The unix socket is guarded by its file mode."),
    Setting("api.socket_group", str, "volant", "Group given read/write on the unix socket "
            "(mode 0660, owner root); the socket is 0600 when the group does not exist."),
    Setting("api.max_body_kb", int, 1024, "Largest request body in KiB."),
    Setting("api.request_timeout", float, 300.0, "Seconds a request may take before it is cut "
            "(streams are exempt: events, logs, console)."),
    Setting("api.check_openapi", bool, False, "Check every REST answer against the OpenAPI "
            "document and turn a mismatch into a 500 (for tests and development)."),
    Setting("events.retention_days", float, 30.0, "Days events are kept in the event log; 0 "
            "keeps them forever."),
    Setting("events.max_rows", int, 100_000, "Most events kept; the oldest go first; 0: no "
            "limit."),
    Setting("events.heartbeat_seconds", float, 15.0, "Seconds between heartbeats on an idle "
            "event stream."),
    Setting("events.queue_size", int, 1024, "Events a subscriber may fall behind before it is "
            "dropped."),
    Setting("dbus.enabled", str, "auto", "Serve the D-Bus API (com.volantvm.Volant1) on the system "
            "bus; auto = when the system bus is there.", ("auto", "yes", "no")),
    Setting("network.bridge", str, "vbr0", "Bridge that VM taps are attached to."),
    Setting("network.subnet", str, "192.168.127.0/24", "IPv4 subnet the VM addresses come from."),
    Setting("network.host_ip", str, "192.168.127.1", "Bridge address; the guests' gateway."),
    Setting("network.manage_bridge", bool, True, "Create the bridge and its address at start."),
    Setting("network.dns", bool, True, "Run dnsmasq on the bridge: DHCP for guests in dhcp mode "
            "(the upper quarter of network.subnet) and DNS for all guests."),
    Setting("network.domain", str, "vm.internal", "DNS domain of the guests: every VM with a "
            "known address is <name>.<domain> to the other guests."),
    Setting("runtime.hypervisor", str, "auto", "Hypervisor to run VMs with.",
            ("auto", "cloud-hypervisor", "qemu")),
    Setting("runtime.accel", str, "auto", "QEMU accelerator.", ("auto", "kvm", "tcg")),
    Setting("runtime.machine", str, "auto", "QEMU machine type.", ("auto", "microvm", "pc", "q35")),
    Setting("runtime.kernel", Path, Path("/usr/lib/volant/guest/vmlinuz"), "Guest kernel."),
    Setting("runtime.initramfs", Path, Path("/usr/lib/volant/guest/initramfs.img"),
            "Guest initramfs."),
    Setting("runtime.ready_timeout", float, 30.0, "Seconds to wait for the hypervisor's API."),
    Setting("runtime.stop_timeout", float, 20.0, "Seconds a guest gets to power off gracefully."),
    Setting("runtime.start_paused", bool, False, "Start guests with their vCPUs paused (tests, "
            "benchmarks)."),
    Setting("runtime.boot_timeout", float, 60.0, "Seconds a guest gets to boot and report its "
            "workload healthy (on top of the health check's start period) before the VM is put in "
            "error."),
    Setting("runtime.console_shell", bool, False, "Give VMs created from now on a root shell "
            "without login on their serial console (`volar vms console`), for debugging. Whoever "
            "may manage VMs then has root inside them."),
    Setting("exec.max_per_vm", int, 8, "Commands (`volar vms exec`) that may run at once in "
            "one VM; one more is refused (409)."),
    Setting("exec.max_output_kb", int, 1024, "Most output, in KiB, kept of each of stdout and "
            "stderr when an exec answers with one JSON document (REST without stream, MCP); the "
            "rest is cut and the answer says truncated."),
    Setting("host.supervisor", str, "auto", "Who holds hypervisor processes: transient systemd "
            "scopes, or plain child processes.", ("auto", "systemd", "process")),
    Setting("vm.default_cpus", int, 1, "vCPUs when a create request names none."),
    Setting("vm.default_memory_mb", int, 256, "Guest RAM when a create request names none."),
    Setting("vm.max_cpus", int, 32, "Largest vCPU count a VM may ask for."),
    Setting("vm.min_memory_mb", int, 64, "Smallest guest RAM in MiB."),
    Setting("vm.max_memory_mb", int, 65536, "Largest guest RAM in MiB."),
    Setting("vm.disk_size_mb", int, 10240, "Size in MiB of the writable disk each VM of a rootfs "
            "plugin gets (a sparse file under state_dir/disks: it takes only what the VM writes)."),
    Setting("vm.files_max_mb", int, 256, "Largest file or directory (tar) copied into or out of a "
            "VM in one request (`volar vms cp`, /files, MCP read_file/write_file), in MiB."),
    Setting("plugins.require_signature", bool, False, "Refuse plugin manifests without a valid "
            "Ed25519 signature by a trusted key (a signature that is present is always checked)."),
    Setting("plugins.trusted_keys_dir", Path, Path("/etc/volant/trusted-keys.d"), "Directory of "
            "trusted Ed25519 public keys (*.pub, PEM) for plugin signatures."),
    Setting("plugins.download_timeout", float, 120.0, "Seconds a manifest or artifact download "
            "may take."),
    Setting("plugins.max_artifact_mb", int, 1024, "Largest plugin artifact (kernel, initramfs) "
            "that is downloaded or cached, in MiB."),
    Setting("images.cache_dir", str, "", "Cache of OCI image blobs and built root file systems "
            "(`volar plugins build`). Default: <state_dir>/images."),
    Setting("images.authfile", str, "", "Registry credentials for image pulls "
            "(containers-auth.json, as `skopeo login` writes it); empty: none."),
    Setting("images.cert_dir", str, "", "Directory of extra CA certificates (*.crt) for image "
            "registries; /etc/containers/certs.d/HOST:PORT/ applies too. TLS is always verified."),
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """The parsed settings; field names are the setting names with dots as underscores."""

    state_dir: Path
    runtime_dir: Path
    log_level: str
    api_listen: str
    api_socket: Path
    api_key: str
    api_allow_cidr: str
    api_socket_group: str
    api_max_body_kb: int
    api_request_timeout: float
    api_check_openapi: bool
    events_retention_days: float
    events_max_rows: int
    events_heartbeat_seconds: float
    events_queue_size: int
    dbus_enabled: str
    network_bridge: str
    network_subnet: str
    network_host_ip: str
    network_manage_bridge: bool
    network_dns: bool
    network_domain: str
    runtime_hypervisor: str
    runtime_accel: str
    runtime_machine: str
    runtime_kernel: Path
    runtime_initramfs: Path
    runtime_ready_timeout: float
    runtime_stop_timeout: float
    runtime_start_paused: bool
    runtime_boot_timeout: float
    runtime_console_shell: bool
    exec_max_per_vm: int
    exec_max_output_kb: int
    host_supervisor: str
    vm_default_cpus: int
    vm_default_memory_mb: int
    vm_max_cpus: int
    vm_min_memory_mb: int
    vm_max_memory_mb: int
    vm_disk_size_mb: int
    vm_files_max_mb: int
    plugins_require_signature: bool
    plugins_trusted_keys_dir: Path
    plugins_download_timeout: float
    plugins_max_artifact_mb: int
    images_cache_dir: str
    images_authfile: str
    images_cert_dir: str

    @property
    def image_cache(self) -> Path:
        """The OCI image cache (blobs and built root file systems)."""
        return Path(self.images_cache_dir) if self.images_cache_dir else self.state_dir / "images"

    @property
    def builds_dir(self) -> Path:
        """Work directories of plugin builds under way (removed when each ends)."""
        return self.state_dir / "builds"

    @property
    def artifacts_dir(self) -> Path:
        """Verified plugin artifacts, content-addressed (sha256) under the state directory."""
        return self.state_dir / "artifacts"

    @property
    def volumes_dir(self) -> Path:
        """Volume files (sparse raw ext4 images) under the state directory: they outlive VMs."""
        return self.state_dir / "volumes"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    def vm_run_dir(self, name: str) -> Path:
        return self.runtime_dir / "vms" / name

    @property
    def api_port(self) -> int | None:
        """The TCP port of api.listen; None when the API serves no TCP (or it names none)."""
        _host, sep, port = self.api_listen.rpartition(":")
        return int(port) if sep and port.isdigit() else None

    @functools.cached_property
    def allowed_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """api.allow_cidr parsed (once: access control asks on every request); empty when
        any address may call. ValueError names a network that is not one."""
        names = filter(None, (n.strip() for n in self.api_allow_cidr.split(",")))
        return tuple(ip_network(name, strict=False) for name in names)

    def vm_console_log(self, name: str) -> Path:
        return self.state_dir / "consoles" / f"{name}.log"

    @property
    def disks_dir(self) -> Path:
        """The VMs' writable disks, `<vm>.img`; under the state directory, so they outlive a
        reboot."""
        return self.state_dir / "disks"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    try:
        if setting.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError("expected true or false")
        if setting.type is Path:
            return Path(os.path.expanduser(str(value)))
        if setting.type is str and isinstance(value, bool):
            # YAML 1.1 reads a bare yes/no as a boolean; the choice meant is the word.
            value = "yes" if value else "no"
        if setting.type in (int, float) and isinstance(value, bool):
            raise ValueError("expected a number")
        coerced = setting.type(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{origin}: {setting.name}: {exc}", field=setting.name) from exc
    if setting.choices and coerced not in setting.choices:
        raise InvalidArgument(
            f"{origin}: {setting.name} must be one of {', '.join(setting.choices)}, "
            f"got {coerced!r}",
            field=setting.name,
        )
    return coerced


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_file(path: Path, table: Mapping[str, Setting]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{path}: expected a mapping of settings")
    values: dict[str, Any] = {}
    for name, value in _flatten(data).items():
        if name not in table:
            raise InvalidArgument(f"{path}: unknown setting {name!r}", field=name)
        if value is None:  # `name:` with no value keeps the default, as in the shipped file
            continue
        values[name] = _coerce(table[name], value, str(path))
    return values


def _defaults_for_dirs(env: Mapping[str, str]) -> tuple[Path, Path]:
    home = Path(env.get("HOME") or Path.home())
    state = Path(env["STATE_DIRECTORY"].split(":")[0]) if env.get("STATE_DIRECTORY") else None
    runtime = Path(env["RUNTIME_DIRECTORY"].split(":")[0]) if env.get("RUNTIME_DIRECTORY") else None
    if runtime is None:
        xdg = env.get("XDG_RUNTIME_DIR")
        runtime = Path("/run/volant") if os.geteuid() == 0 or not xdg else Path(xdg) / "volant"
    return state or home / ".volant", runtime


def config_files(files: Sequence[Path] | None = None) -> list[Path]:
    """The files that are read, in order: the given ones, or the defaults and the drop-ins;
    only those that exist."""
    if files is None:
        dropins = sorted(DROPIN_DIR.glob("*.yaml")) if DROPIN_DIR.is_dir() else []
        files = [*DEFAULT_FILES, *dropins]
    return [path for path in files if path.is_file()]


def load_config(
    files: Sequence[Path] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Merge defaults, the config files that exist, drop-ins and VOLANT_* variables."""
    env = os.environ if env is None else env
    table = {s.name: s for s in SETTINGS}
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    for path in config_files(files):
        values.update(_read_file(path, table))
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.name] = _coerce(setting, env[setting.env], setting.env)
    state, runtime = _defaults_for_dirs(env)
    values["state_dir"] = values["state_dir"] or state
    values["runtime_dir"] = values["runtime_dir"] or runtime
    values["api.socket"] = values["api.socket"] or values["runtime_dir"] / "volantd.sock"
    config = Config(**{table[name].attr: value for name, value in values.items()})
    _check(config)
    return config


def _check(config: Config) -> None:
    from ipaddress import IPv4Address

    try:
        subnet = IPv4Network(config.network_subnet)
        host = IPv4Address(config.network_host_ip)
    except ValueError as exc:
        raise InvalidArgument(f"network settings: {exc}") from exc
    if host not in subnet or host in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(
            f"network.host_ip {host} is not a host address of network.subnet {subnet}"
        )
    try:
        config.allowed_networks  # noqa: B018 -- parsing the networks is the check
    except ValueError as exc:
        raise InvalidArgument(f"api.allow_cidr: {exc}", field="api.allow_cidr") from exc
    if config.vm_min_memory_mb > config.vm_max_memory_mb:
        raise InvalidArgument("vm.min_memory_mb is larger than vm.max_memory_mb")
    if config.vm_disk_size_mb < 16:
        raise InvalidArgument("vm.disk_size_mb must be at least 16", field="vm.disk_size_mb")
    _check_events(config)
    _check_domain(config.network_domain)


def _check_domain(domain: str) -> None:
    import re

    label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    if len(domain) > 200 or not re.fullmatch(rf"{label}(\.{label})*", domain):
        raise InvalidArgument(
            f"network.domain {domain!r} is not a DNS domain (lower-case labels joined by dots)",
            hint="for example vm.internal",
            field="network.domain",
        )


def _check_events(config: Config) -> None:
    # A negative retention would put the cutoff in the future and empty the log.
    if config.events_retention_days < 0 or config.events_max_rows < 0:
        raise InvalidArgument("events.retention_days and events.max_rows must not be negative")
    if config.events_heartbeat_seconds <= 0:
        raise InvalidArgument("events.heartbeat_seconds must be positive")
    if config.events_queue_size < 1:
        raise InvalidArgument("events.queue_size must be at least 1")
    if config.exec_max_per_vm < 1 or config.exec_max_output_kb < 1:
        raise InvalidArgument("exec.max_per_vm and exec.max_output_kb must be at least 1")


def config_fields() -> list[str]:
    """Names of Config's fields (the settings-table test compares them)."""
    return [f.name for f in dataclasses.fields(Config)]
