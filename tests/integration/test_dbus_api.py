"""The D-Bus API of a real volantd on a private dbus-daemon: contract, errors, lifecycle.

volantd runs in its own network namespace (with the bridge and one real QEMU guest) and joins a
private bus through DBUS_SYSTEM_BUS_ADDRESS; no polkitd is on that bus, so the daemon decides by
uid (root and its own user may manage; anyone may read).

Set VOLANT_UPDATE_DBUS_XML=1 to rewrite the committed interface XML from the live objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdbus import DbusObjectManagerInterfaceAsync, SdBus, sd_bus_open_system
from sdbus.sd_bus_internals import SdBusMessage

from tests.integration.daemon import (
    GUEST_DIR,
    ROOT,
    Daemon,
    build_guest,
    netns,
    start_daemon,
    stop_daemon,
)
from tests.integration.oci_images import image_layout
from volant.api.dbus import (
    MANAGER_PATH,
    PLUGIN_PATH_PREFIX,
    SERVICE,
    ManagerInterface,
    PluginInterface,
    VMInterface,
)
from volant.api.dbus.errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidStateError,
    NameTakenError,
    NotFoundError,
    SignatureInvalidError,
)
from volant.api.dbus.server import REFRESH
from volant.plugins.signing import generate_keypair, sign

pytestmark = pytest.mark.integration

XML_DIR = ROOT / "packaging" / "dbus"
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow eavesdrop="true"/>
  </policy>
</busconfig>
"""
VM = "dbx"
VM_PATH = f"{MANAGER_PATH}/vm/{VM}"
DEMO_PATH = f"{PLUGIN_PATH_PREFIX}/demo"  # the harness installs plugin "demo"
KEY = "tester"


@pytest.fixture(scope="module")
def bus_address() -> Iterator[str]:
    # Outside pytest's 0700 tmp tree: the unprivileged test caller must reach the socket.
    tmp = Path(tempfile.mkdtemp(prefix="volant-bus-"))
    tmp.chmod(0o755)
    conf = tmp / "bus.conf"
    conf.write_text(BUS_CONF.format(path=tmp / "bus"))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(bus_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # Any bootable guest will do here (nothing is asked of it over the network).
    if not (GUEST_DIR / "vmlinuz").exists() or not (GUEST_DIR / "initramfs.img").exists():
        build_guest()
    tmp = tmp_path_factory.mktemp("volantd")
    generate_keypair(tmp / "keys", KEY)  # the daemon trusts keys/*.pub
    settings = {"dbus.enabled": "yes", "plugins.trusted_keys_dir": str(tmp / "keys")}
    with netns() as ns:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": bus_address}
        d = start_daemon(ns, tmp, settings, env=env)
        try:
            yield d
        finally:
            stop_daemon(d)


@pytest.fixture
async def bus(daemon: Daemon, bus_address: str, monkeypatch: pytest.MonkeyPatch) -> SdBus:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
    return sd_bus_open_system()


def busctl(address: str, *argv: str, uid: int = 0) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
    return subprocess.run(
        [*prefix, "busctl", f"--address={address}", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def interface_xml(xml: str, name: str) -> ET.Element:
    for element in ET.fromstring(xml).iter("interface"):
        if element.get("name") == name:
            return element
    raise AssertionError(f"interface {name} not in {xml}")


def shape(element: ET.Element) -> Any:
    """An element as nested tuples: the comparison ignores whitespace and attribute order."""
    return (element.tag, sorted(element.attrib.items()), [shape(child) for child in element])


def check_contract(address: str, path: str, name: str) -> None:
    proc = busctl(address, "--xml-interface", "introspect", SERVICE, path)
    assert proc.returncode == 0, proc.stderr
    live = interface_xml(proc.stdout, name)
    committed = XML_DIR / f"{name}.xml"
    if os.environ.get("VOLANT_UPDATE_DBUS_XML"):
        for element in live.iter():
            element.text = element.tail = None
        node = ET.Element("node")
        node.append(live)
        ET.indent(node)
        committed.write_text(ET.tostring(node, encoding="unicode") + "\n")
    assert shape(interface_xml(committed.read_text(), name)) == shape(live)


@pytest.fixture(scope="module")
def created(daemon: Daemon, bus_address: str) -> str:
    spec = ["a{sv}", "3", "name", "s", VM, "plugin", "s", "demo", "memory_mb", "u", "128"]
    proc = busctl(bus_address, "call", SERVICE, MANAGER_PATH, f"{SERVICE}.Manager", "CreateVM",
                  *spec, "--timeout=180")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + daemon.log_text()
    assert proc.stdout.strip() == f'o "{VM_PATH}"'
    return VM_PATH


def tree(address: str, wanted: str) -> list[str]:
    """`busctl tree` once `wanted` is in it: plugins installed over REST (as the harness does)
    reach D-Bus with the server's next refresh."""
    deadline = time.monotonic() + REFRESH * 3
    while True:
        paths = busctl(address, "tree", "--list", SERVICE).stdout.split()
        if wanted in paths or time.monotonic() > deadline:
            return paths
        time.sleep(0.2)


def test_tree_and_introspection_match_the_committed_xml(created: str, bus_address: str) -> None:
    paths = tree(bus_address, DEMO_PATH)
    assert {MANAGER_PATH, created, DEMO_PATH} <= set(paths)
    check_contract(bus_address, MANAGER_PATH, f"{SERVICE}.Manager")
    check_contract(bus_address, created, f"{SERVICE}.VM")
    check_contract(bus_address, DEMO_PATH, f"{SERVICE}.Plugin")


async def test_objects_and_errors_over_the_proxy(created: str, bus: SdBus) -> None:
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    vm = VMInterface.new_proxy(SERVICE, created, bus)
    assert (await vm.name, await vm.status, await vm.memory_mb) == (VM, "running", 128)
    assert await vm.status_reason == ""
    assert await vm.ip_address == "192.168.127.2"
    assert await vm.pid > 0
    listed = await manager.list_vms()
    assert [item["name"] for item in listed] == [("s", VM)]
    assert listed[0]["object_path"] == ("o", created)
    with pytest.raises(NotFoundError, match="no VM named 'ghost'"):
        await manager.get_vm("ghost")
    with pytest.raises(InvalidArgumentError, match="unknown key 'colour'"):
        await manager.create_vm({"name": ("s", "x"), "colour": ("s", "red")})
    with pytest.raises(InvalidArgumentError, match="cpu_cores: expected an integer"):
        await manager.create_vm({"name": ("s", "x"), "cpu_cores": ("s", "2")})
    with pytest.raises(InvalidStateError):
        await manager.start_vm(VM)
    status = await manager.get_system_status()
    assert status["vms_total"] == ("x", 1)


async def test_the_agent_secret_is_on_no_dbus_reply(
    created: str, bus: SdBus, daemon: Daemon, bus_address: str
) -> None:
    """GetVM shows isolated but never the VM's agent secret; nor do the list, the events, the
    VM object's properties or the daemon's log."""
    secret = daemon.agent_secret(VM)
    assert len(secret) >= 43
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    got = await manager.get_vm(VM)
    assert got["isolated"] == ("b", False)
    seen = [repr(got), repr(await manager.list_vms()), repr(await manager.list_events(0, 1000))]
    properties = busctl(bus_address, "introspect", SERVICE, created, f"{SERVICE}.VM")
    assert properties.returncode == 0, properties.stderr
    assert VM in properties.stdout  # the values are there: Name, Status, ...
    seen += [properties.stdout, daemon.log_text()]
    assert all(secret not in text for text in seen)


async def test_actions_reach_the_vm_of_the_plugin(created: str, bus: SdBus) -> None:
    # The busybox guest runs no agent: only what is decided before reaching it is checked here
    # (tests/integration/test_agent_guest.py drives real actions).
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    with pytest.raises(NotFoundError, match="plugin 'demo' has no action 'nope'"):
        await manager.call_action(VM, "nope", b"{}", "application/json")
    with pytest.raises(NotFoundError, match="plugin 'demo' has no action 'nope'"):
        await manager.call_plugin_action("demo", "nope", b"", "")
    with pytest.raises(NotFoundError):
        await manager.call_action("ghost", "nope", b"", "")
    with pytest.raises(ConflictError):
        await manager.remove_plugin("demo")  # dbx uses it


async def test_console_log(created: str, bus: SdBus) -> None:
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    deadline = time.monotonic() + 60
    while b"Linux version" not in await manager.get_console_log(VM, 10_000):
        assert time.monotonic() < deadline, "the guest never printed its kernel banner"
        await asyncio.sleep(0.5)
    assert (await manager.get_console_log(VM, 1)).count(b"\n") <= 1
    assert await manager.get_console_log(VM, 0)  # 0 asks for the default
    with pytest.raises(InvalidArgumentError, match="lines must be 1 to 10000"):
        await manager.get_console_log(VM, 10_001)
    with pytest.raises(NotFoundError):
        await manager.get_console_log("ghost", 10)


def test_unprivileged_caller_may_read_but_not_manage(created: str, bus_address: str) -> None:
    nobody = 65534
    iface = f"{SERVICE}.Manager"
    listed = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, "ListVMs", uid=nobody)
    assert listed.returncode == 0, listed.stderr
    assert VM in listed.stdout
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", "dbus-send",
         f"--bus={bus_address}", "--print-reply", f"--dest={SERVICE}", MANAGER_PATH,
         f"{iface}.StopVM", f"string:{VM}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "com.volantvm.Volant1.Error.PermissionDenied" in proc.stderr
    # What a guest prints on its console may be secret: reading it is managing the VM.
    log = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, "GetConsoleLog", "su", VM,
                 "5", uid=nobody)  # fmt: skip
    assert log.returncode != 0
    assert "com.volantvm.volant1.manage-vms" in log.stderr
    plugins = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, "ListPlugins", uid=nobody)
    assert plugins.returncode == 0, plugins.stderr
    assert '"demo"' in plugins.stdout
    for method in ("DisablePlugin", "RemovePlugin"):
        proc = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, method, "s", "demo",
                      uid=nobody)  # fmt: skip
        assert proc.returncode != 0
        assert "com.volantvm.volant1.manage-plugins" in proc.stderr
    proc = busctl(bus_address, "call", SERVICE, DEMO_PATH, f"{SERVICE}.Plugin", "Disable",
                  uid=nobody)  # fmt: skip
    assert proc.returncode != 0
    assert "com.volantvm.volant1.manage-plugins" in proc.stderr
    volumes = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, "ListVolumes", uid=nobody)
    assert volumes.returncode == 0, volumes.stderr
    proc = busctl(bus_address, "call", SERVICE, MANAGER_PATH, iface, "CreateVolume", "a{sv}", "2",
                  "name", "s", "mine", "size", "s", "1G", uid=nobody)  # fmt: skip
    assert proc.returncode != 0
    assert "com.volantvm.volant1.manage-vms" in proc.stderr


async def test_volumes(created: str, bus: SdBus) -> None:
    """The volume verbs, and volumes in CreateVM and GetVM."""
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    made = await manager.create_volume({"name": ("s", "dbvol"), "size": ("t", 32 << 20)})
    assert (made["name"], made["size_bytes"], made["formatted"]) == (
        ("s", "dbvol"), ("x", 32 << 20), ("b", False),
    )  # fmt: skip
    with pytest.raises(NameTakenError):
        await manager.create_volume({"name": ("s", "dbvol"), "size": ("s", "32M")})
    with pytest.raises(InvalidArgumentError, match="size: expected"):
        await manager.create_volume({"name": ("s", "other"), "size": ("b", True)})
    assert [v["name"] for v in await manager.list_volumes()] == [("s", "dbvol")]
    grown = await manager.resize_volume("dbvol", {"size": ("s", "64M")})
    assert grown["size_bytes"] == ("x", 64 << 20)
    with pytest.raises(InvalidArgumentError, match="only grow"):
        await manager.resize_volume("dbvol", {"size": ("s", "32M")})
    twice = [{"name": ("s", "dbvol"), "path": ("s", p)} for p in ("/a", "/b")]
    with pytest.raises(InvalidArgumentError, match="attached twice"):
        await manager.create_vm(
            {"name": ("s", "v2"), "plugin": ("s", "demo"), "volumes": ("aa{sv}", twice)}
        )
    unknown = [{"name": ("s", "nope"), "path": ("s", "/a")}]
    with pytest.raises(NotFoundError, match="no volume named 'nope'"):
        await manager.create_vm(
            {"name": ("s", "v2"), "plugin": ("s", "demo"), "volumes": ("aa{sv}", unknown)}
        )
    assert (await manager.get_vm(VM))["volumes"] == ("av", [])
    assert (await manager.get_volume("dbvol"))["attachments"] == ("av", [])
    await manager.delete_volume("dbvol")
    with pytest.raises(NotFoundError):
        await manager.get_volume("dbvol")


class Signals:
    """Signals from one object path, queued from the moment the match rule is in place."""

    def __init__(self, bus: SdBus, path: str) -> None:
        self.bus = bus
        self.path = path
        self.queue: asyncio.Queue[SdBusMessage] = asyncio.Queue()
        self.slot: Any = None

    async def start(self) -> Signals:
        self.slot = await self.bus.match_signal_async(
            None, self.path, None, None, self.queue.put_nowait
        )
        return self

    async def next(self, *members: str) -> Any:
        """The next signal named one of `members`: its arguments, or (name, arguments)."""
        async with asyncio.timeout(60):
            while True:
                message = await self.queue.get()
                if message.member in members:
                    args = message.get_contents()
                    return args if len(members) == 1 else (message.member, args)


async def test_stop_restart_destroy_emit_signals(created: str, bus: SdBus) -> None:
    vm = VMInterface.new_proxy(SERVICE, created, bus)
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    vm_signals = await Signals(bus, created).start()
    manager_signals = await Signals(bus, MANAGER_PATH).start()

    await vm.stop()
    statuses: list[str] = []
    while "stopped" not in statuses:
        _iface, changed, _gone = await vm_signals.next("PropertiesChanged")
        if "Status" in changed:
            statuses.append(changed["Status"][1])
    # "stopping" has no engine event (DESIGN.md lists none), so only "stopped" is announced.
    assert statuses == ["stopped"]
    assert await vm.pid == 0

    restarted = await manager.restart_vm(VM)
    assert restarted["status"] == ("s", "running")
    assert await vm.status == "running"

    await vm.destroy()
    types: list[str] = []
    removed: list[str] = []
    while "VM_DELETED" not in types or not removed:
        member, args = await manager_signals.next("VMEvent", "InterfacesRemoved")
        if member == "InterfacesRemoved":
            removed.append(args[0])
            continue
        event_id, event_type, name, _payload = args
        assert (name, event_id > 0) == (VM, True)
        types.append(event_type)
    assert types[0] == "VM_STOPPED"
    assert removed == [created]
    with pytest.raises(NotFoundError):
        await manager.get_vm(VM)


def write_plugin(directory: Path, name: str, **changes: Any) -> Path:
    """A valid manifest whose initramfs is a small file beside it; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / f"{name}.img"
    artifact.write_bytes(f"initramfs of {name}\n".encode())
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": name,
        "resources": {"cpu_cores": 1, "memory_mb": 128},
        "workload": {"type": "process", "entrypoint": ["/bin/true"]},
        "initramfs": {"path": str(artifact), "checksum": f"sha256:{digest}"},
        "network": {"mode": "bridged"},
        **changes,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def install_request(path: Path, **extra: tuple[str, Any]) -> dict[str, tuple[str, Any]]:
    return {"manifest": ("s", path.read_text()), "origin": ("s", path.as_uri()), **extra}


async def test_plugin_install_disable_replace_remove(
    bus_address: str, bus: SdBus, tmp_path: Path
) -> None:
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    objects = DbusObjectManagerInterfaceAsync.new_proxy(SERVICE, MANAGER_PATH, bus)
    manager_signals = await Signals(bus, MANAGER_PATH).start()
    manifest = write_plugin(tmp_path, "dbplug")
    path = f"{PLUGIN_PATH_PREFIX}/dbplug"

    assert await manager.install_plugin(install_request(manifest)) == path
    added, interfaces = await manager_signals.next("InterfacesAdded")
    assert added == path
    assert interfaces[f"{SERVICE}.Plugin"]["Enabled"] == ("b", True)
    managed = await objects.get_managed_objects()
    assert managed[path][f"{SERVICE}.Plugin"]["Version"] == ("s", "1.0.0")
    assert DEMO_PATH in managed
    assert path in busctl(bus_address, "tree", "--list", SERVICE).stdout.split()

    plugin = PluginInterface.new_proxy(SERVICE, path, bus)
    assert (await plugin.name, await plugin.version, await plugin.runtime) == (
        "dbplug", "1.0.0", "dbplug",
    )  # fmt: skip
    assert (await plugin.digest).startswith("sha256:")
    assert (await plugin.signer, await plugin.source) == ("", manifest.as_uri())
    shown = await manager.get_plugin("dbplug")
    assert shown["object_path"] == ("o", path)
    assert json.loads(shown["manifest_json"][1])["name"] == "dbplug"
    assert {p["name"][1] for p in await manager.list_plugins()} >= {"demo", "dbplug"}

    plugin_signals = await Signals(bus, path).start()
    await plugin.disable()
    _iface, changed, _gone = await plugin_signals.next("PropertiesChanged")
    assert changed == {"Enabled": ("b", False)}
    assert await plugin.enabled is False
    with pytest.raises(InvalidStateError, match="disabled"):
        await manager.create_vm({"name": ("s", "nope"), "plugin": ("s", "dbplug")})
    assert (await manager.enable_plugin("dbplug"))["enabled"] == ("b", True)
    _iface, changed, _gone = await plugin_signals.next("PropertiesChanged")
    assert changed == {"Enabled": ("b", True)}
    assert await plugin.enabled is True

    upgrade = write_plugin(tmp_path / "v2", "dbplug", version="1.1.0")
    with pytest.raises(NameTakenError):
        await manager.install_plugin(install_request(upgrade))
    await manager.install_plugin(install_request(upgrade, replace=("b", True)))
    _iface, changed, _gone = await plugin_signals.next("PropertiesChanged")
    assert changed["Version"] == ("s", "1.1.0")
    assert "Digest" in changed

    await plugin.remove()
    removed, _ifaces = await manager_signals.next("InterfacesRemoved")
    assert removed == path
    assert path not in await objects.get_managed_objects()
    with pytest.raises(NotFoundError):
        await manager.get_plugin("dbplug")


async def test_plugin_changes_over_rest_reach_the_objects(
    daemon: Daemon, bus: SdBus, tmp_path: Path
) -> None:
    """REST changes have no events: the server's periodic refresh picks them up."""
    manifest = write_plugin(tmp_path, "restplug")
    body = {"manifest": manifest.read_text(), "origin": manifest.as_uri()}
    await asyncio.to_thread(daemon.call, lambda c: c.request("POST", "/api/v1/plugins", body))
    objects = DbusObjectManagerInterfaceAsync.new_proxy(SERVICE, MANAGER_PATH, bus)
    path = f"{PLUGIN_PATH_PREFIX}/restplug"

    async def exported() -> bool:
        async with asyncio.timeout(REFRESH * 3):
            while path not in await objects.get_managed_objects():
                await asyncio.sleep(0.2)
        return True

    assert await exported()
    await asyncio.to_thread(daemon.call, lambda c: c.request("DELETE", "/api/v1/plugins/restplug"))
    async with asyncio.timeout(REFRESH * 3):
        while path in await objects.get_managed_objects():
            await asyncio.sleep(0.2)


async def test_plugin_installs_refused_with_their_error(
    daemon: Daemon, bus: SdBus, tmp_path: Path
) -> None:
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    schema = json.loads(await manager.get_plugin_schema())
    assert schema["title"] == "Volant plugin manifest"
    assert "initramfs" in schema["properties"]

    manifest = write_plugin(tmp_path, "signed")
    with pytest.raises(InvalidArgumentError, match="unknown key 'force'"):
        await manager.install_plugin(install_request(manifest, force=("b", True)))
    with pytest.raises(InvalidArgumentError, match="replace: expected type 'b'"):
        await manager.install_plugin(install_request(manifest, replace=("s", "yes")))
    with pytest.raises(InvalidArgumentError, match="either the manifest text or a URL"):
        await manager.install_plugin({})
    with pytest.raises(InvalidArgumentError):
        await manager.install_plugin({"manifest": ("s", '{"schema_version": 1, "name": "x"}')})
    with pytest.raises(InvalidArgumentError):
        await manager.install_plugin({"manifest": ("s", "not: [json")})

    # A signature that is given is always checked, whether or not the host requires one.
    other = sign(manifest.read_bytes() + b" ", daemon.tmp / "keys" / f"{KEY}.key")
    with pytest.raises(SignatureInvalidError, match="does not match"):
        await manager.install_plugin(install_request(manifest, signature=("s", other)))
    with pytest.raises(SignatureInvalidError, match="not base64"):
        await manager.install_plugin(install_request(manifest, signature=("s", "%%")))
    with pytest.raises(NotFoundError):
        await manager.get_plugin("signed")

    good = sign(manifest.read_bytes(), daemon.tmp / "keys" / f"{KEY}.key")
    path = await manager.install_plugin(install_request(manifest, signature=("s", good)))
    plugin = PluginInterface.new_proxy(SERVICE, path, bus)
    assert await plugin.signer == KEY
    await manager.remove_plugin("signed")


async def test_plugin_build_over_dbus(bus: SdBus) -> None:
    """BuildPlugin starts a build of a local test image; GetBuild follows it; CancelBuild forgets
    it; the built plugin is an object like any other."""
    manager = ManagerInterface.new_proxy(SERVICE, MANAGER_PATH, bus)
    with pytest.raises(InvalidArgumentError, match="bogus: unknown build option"):
        await manager.build_plugin({"image": ("s", "oci:/x"), "bogus": ("b", True)})
    with pytest.raises(InvalidArgumentError, match="args: expected a list of strings"):
        await manager.build_plugin({"image": ("s", "oci:/x"), "args": ("s", "a")})
    with pytest.raises(InvalidArgumentError, match="is not an image reference"):
        await manager.build_plugin({"image": ("s", "ftp://x")})
    with pytest.raises(NotFoundError):
        await manager.get_build("000000000000")
    request = {
        "image": ("s", f"oci:{image_layout()}:app"),
        "name": ("s", "dbbuilt"),
        "env": ("a{ss}", {"FROM": "dbus"}),
        "memory_mb": ("u", 128),
    }
    build = await manager.build_plugin(request)
    build_id = build["id"][1]
    for _ in range(600):
        build = await manager.get_build(build_id)
        if build["state"][1] != "running":
            break
        await asyncio.sleep(0.1)
    assert build["state"] == ("s", "succeeded"), build
    assert build_id in [b["id"][1] for b in await manager.list_builds()]
    plugin = await manager.get_plugin("dbbuilt")
    manifest = json.loads(plugin["manifest_json"][1])
    assert manifest["workload"]["env"]["FROM"] == "dbus"
    assert manifest["resources"]["memory_mb"] == 128
    assert (await manager.cancel_build(build_id))["state"] == ("s", "succeeded")
    with pytest.raises(NotFoundError):
        await manager.get_build(build_id)
    await manager.remove_plugin("dbbuilt")
