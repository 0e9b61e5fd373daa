"""`volar plugins build` and POST /api/v1/plugins/build against a real volantd and registry.

volantd runs in the registry's network namespace (tests/integration/registry.py: Debian's
docker-registry with a throw-away CA and a password), so its build worker pulls over verified
TLS with the auth file and CA the daemon's settings name. The images are the hand-made test
images of tests/integration/oci_images.py. Every failed or cancelled build must leave nothing:
no plugin, no work directory, no worker process, no ledger record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import BIN, ROOT, Daemon, raw, start_daemon, stop_daemon
from tests.integration.erofs import erofs_tree
from tests.integration.example_image import nginx_layout
from tests.integration.oci_images import APP_UID, image_layout
from tests.integration.registry import HOST, Registry, serving_registry
from tests.ocitar import file, tar_bytes
from volant.client import VolantClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and umoci need root"),
]

APP = f"docker://{HOST}/volant/app:1"
APP_ARGV = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/www"]
BUILD_EVENTS = "BUILD_STARTED,BUILD_PROGRESS,BUILD_SUCCEEDED,BUILD_FAILED,BUILD_CANCELLED"


@pytest.fixture(scope="module")
def layout() -> Path:
    return image_layout()


@pytest.fixture(scope="module")
def registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with serving_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(layout, "app", "volant/app:1")
        reg.push(layout, "app", "team/web:1.25")  # the image docs/images.md builds
        yield reg


def daemon_settings(reg: Registry, **more: Any) -> dict[str, Any]:
    return {"images.authfile": str(reg.authfile), "images.cert_dir": str(reg.cert_dir), **more}


@pytest.fixture(scope="module")
def daemon(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("volantd")
    (tmp / "trusted").mkdir()
    settings = daemon_settings(registry, **{"plugins.trusted_keys_dir": str(tmp / "trusted")})
    d = start_daemon(registry.ns, tmp, settings, plugins=())
    try:
        yield d
    finally:
        stop_daemon(d)


def manifest_of(daemon: Daemon, name: str) -> dict[str, Any]:
    status, _ctype, body = raw(daemon, "GET", f"/api/v1/plugins/{name}/manifest")
    assert status == 200, body
    return dict(body)


def plugin_names(daemon: Daemon) -> set[str]:
    return {p["name"] for p in daemon.call(lambda c: c.list_plugins())}


def worker_pids(daemon: Daemon) -> list[int]:
    """Processes of this daemon's builds (the worker and its tools carry VOLANT_BUILD)."""
    owner = f"VOLANT_OWNER={daemon.tmp / 'state'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                env = (entry / "environ").read_bytes().split(b"\0")
                if owner in env and any(v.startswith(b"VOLANT_BUILD=") for v in env):
                    pids.append(int(entry.name))
    return pids


def build_records(daemon: Daemon) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{daemon.tmp / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT kind, name FROM host_resources WHERE kind LIKE 'build%'")
        return [(str(k), str(n)) for k, n in rows]
    finally:
        db.close()


def assert_left_nothing(daemon: Daemon) -> None:
    builds = daemon.tmp / "state" / "builds"
    assert not builds.exists() or list(builds.iterdir()) == [], list(builds.iterdir())
    assert worker_pids(daemon) == []
    assert build_records(daemon) == []
    images = daemon.tmp / "state" / "images"
    partial = [p for p in images.rglob("*.part")] if images.exists() else []
    assert partial == []


def wait_build(daemon: Daemon, build_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build: dict[str, Any] = daemon.call(lambda c: c.get_build(build_id))
        if build["state"] != "running":
            return build
        time.sleep(0.2)
    raise AssertionError(f"build {build_id} still running after {timeout}s")


def test_volar_build_installs_the_image_as_a_plugin(daemon: Daemon, registry: Registry) -> None:
    proc = daemon.volar("plugins", "build", "--image", APP, "--name", "app")
    assert proc.returncode == 0, proc.stderr
    assert "Plugin app built from" in proc.stdout
    manifest = manifest_of(daemon, "app")
    workload = manifest["workload"]
    assert workload["entrypoint"] == APP_ARGV
    assert workload["env"] == {"PATH": "/bin", "GREETING": "hello from layer two"}
    assert workload["workdir"] == "/home/app"
    assert workload["user"] == "app"
    assert workload["type"] == "process"
    assert manifest["image"] == APP
    pushed = [m for m, p in registry.requests() if "/manifests/sha256:" in p]
    assert pushed, "the worker pinned the pull to the manifest digest"
    assert manifest["image_digest"].startswith("sha256:")
    assert manifest["version"] == "1"
    assert manifest["runtime"] == "oci"
    assert manifest["labels"] == {"oci.exposed-ports": "8080/tcp"}
    rootfs = manifest["rootfs"]
    assert rootfs["format"] == "erofs"
    assert Path(rootfs["path"]).read_bytes()[1024:1028] == bytes.fromhex("e2e1f5e0")  # erofs
    assert_left_nothing(daemon)


def test_a_built_plugin_can_be_signed_and_installed_signed(daemon: Daemon) -> None:
    """The operator's path in docs/images.md: build, print the manifest, sign, reinstall."""
    assert daemon.volar("plugins", "build", "--image", APP, "--name", "signed").returncode == 0
    keys, manifest = daemon.tmp / "keys", daemon.tmp / "signed.json"
    assert daemon.volar("plugins", "keygen", "builder", "--dir", str(keys)).returncode == 0
    (daemon.tmp / "trusted" / "builder.pub").write_bytes((keys / "builder.pub").read_bytes())
    shown = daemon.volar("plugins", "manifest", "signed")
    assert shown.returncode == 0, shown.stderr
    manifest.write_text(shown.stdout)
    signed = daemon.volar("plugins", "sign", str(manifest), "--key", str(keys / "builder.key"))
    assert signed.returncode == 0, signed.stderr
    again = daemon.volar("plugins", "install", str(manifest), "--replace")
    assert again.returncode == 0, again.stderr
    assert "signed by builder" in again.stdout
    assert daemon.call(lambda c: c.get_plugin("signed"))["signer"] == "builder"
    manifest.write_text(shown.stdout.replace('"erofs"', '"erofs" '))  # not what was signed
    tampered = daemon.volar("plugins", "install", str(manifest), "--replace")
    assert tampered.returncode == 1
    assert "signature" in tampered.stderr


def doc_commands() -> list[str]:
    """The commands of the block tagged plugin-build in docs/images.md."""
    text = (ROOT / "docs" / "images.md").read_text()
    found = re.search(r"<!-- test: plugin-build .*?-->\n```sh\n(.*?)```", text, re.DOTALL)
    assert found, "docs/images.md has no plugin-build block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def test_the_commands_docs_images_shows(daemon: Daemon, layout: Path) -> None:
    """docs/images.md's operator commands, with the test registry and files put in."""
    keys = daemon.tmp / "doc-keys"
    assert daemon.volar("plugins", "keygen", "builder", "--dir", str(keys)).returncode == 0
    (daemon.tmp / "trusted" / "docbuilder.pub").write_bytes((keys / "builder.pub").read_bytes())
    swaps = {
        "registry.example": HOST,
        "/srv/layouts/web:latest": f"{layout}:app",
        "web.json": str(daemon.tmp / "web.json"),
        "builder.key": str(keys / "builder.key"),
    }
    for shown in doc_commands():
        line = shown
        for old, new in swaps.items():
            line = line.replace(old, new)
        argv, _, out = line.partition(" > ")
        words = shlex.split(argv)
        assert words[0] == "volar"
        proc = daemon.volar(*words[1:])
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
        if out:
            Path(out).write_text(proc.stdout)
    assert manifest_of(daemon, "web")["version"] == "1.25"
    assert manifest_of(daemon, "web-test")["workload"]["env"]["GREETING"] == "hi"
    assert daemon.call(lambda c: c.get_plugin("web"))["signer"] == "docbuilder"


def test_second_build_of_the_same_digest_is_a_cache_hit(daemon: Daemon) -> None:
    first = daemon.volar("plugins", "build", "--image", APP, "--name", "app-one", "--json")
    assert first.returncode == 0, first.stderr
    again = daemon.volar("plugins", "build", "--image", APP, "--name", "app-two", "--json")
    assert again.returncode == 0, again.stderr
    build = json.loads(again.stdout)
    assert build["state"] == "succeeded"
    assert build["cache_hit"] is True
    one, two = manifest_of(daemon, "app-one"), manifest_of(daemon, "app-two")
    assert one["rootfs"] == two["rootfs"]
    assert one["image_digest"] == two["image_digest"]


async def _build_with_events(daemon: Daemon, body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    opened = asyncio.Event()
    async with VolantClient(daemon.api, timeout=60) as client:

        async def follow() -> None:
            async for sse in client.events(
                "/api/v1/events/vms", query={"type": BUILD_EVENTS}, on_open=opened.set
            ):
                event = json.loads(sse.data)
                events.append(event)
                if event["type"] in ("BUILD_SUCCEEDED", "BUILD_FAILED", "BUILD_CANCELLED"):
                    return

        task = asyncio.create_task(follow())
        await asyncio.wait_for(opened.wait(), 10)
        build = await client.build_plugin(body)
        assert build["state"] == "running"
        assert build["plugin"] == body["name"]
        await asyncio.wait_for(task, 120)
    return events


def test_rest_build_with_overrides_reports_progress_over_sse(daemon: Daemon) -> None:
    body = {
        "image": APP,
        "name": "web-rest",
        "version": "2.0",
        "args": ["-f", "-p", "9090", "-h", "/srv/www"],
        "env": {"GREETING": "overridden", "EXTRA": "1"},
        "workdir": "/srv/www",
        "user": "0",
        "health_path": "/",
        "memory_mb": 128,
    }
    events = asyncio.run(_build_with_events(daemon, body))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "BUILD_STARTED", kinds
    assert kinds[-1] == "BUILD_SUCCEEDED", kinds
    steps = [e["payload"]["step"] for e in events if e["type"] == "BUILD_PROGRESS"]
    assert steps[:2] == ["pull", "build"], steps
    assert all(e["payload"]["plugin"] == "web-rest" for e in events), events
    workload = manifest_of(daemon, "web-rest")["workload"]
    assert workload["entrypoint"] == ["/bin/busybox", "httpd", "-f", "-p", "9090", "-h", "/srv/www"]
    assert workload["env"] == {"PATH": "/bin", "GREETING": "overridden", "EXTRA": "1"}
    assert workload["workdir"] == "/srv/www"
    assert workload["user"] == "0"
    assert workload["type"] == "http"
    assert workload["base_url"] == "http://127.0.0.1:8080"  # the exposed port: a hint
    assert workload["health_check"] == {"path": "/"}
    assert manifest_of(daemon, "web-rest")["resources"]["memory_mb"] == 128


@contextlib.contextmanager
def silent_listener(ns: str, port: int) -> Iterator[None]:
    """A TCP port in ns that accepts connections and never answers (a hung registry)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-c",
         "import socket, time\n"
         f"s = socket.create_server(('127.0.0.1', {port}))\n"
         "conns = []\n"
         "while True: conns.append(s.accept())\n"],
    )  # fmt: skip
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def test_cancel_leaves_nothing(daemon: Daemon) -> None:
    with silent_listener(daemon.ns, 5055):
        build = daemon.call(
            lambda c: c.build_plugin(
                {"image": "docker://127.0.0.1:5055/hung/app:1", "name": "hung"}
            )
        )
        deadline = time.monotonic() + 30
        while not worker_pids(daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_pids(daemon), "the worker started"
        time.sleep(1.0)  # skopeo is connected and waiting for an answer
        cancelled = daemon.call(lambda c: c.cancel_build(build["id"]))
    assert cancelled["state"] == "cancelled"
    status, _ctype, _body = raw(daemon, "GET", f"/api/v1/builds/{build['id']}")
    assert status == 404  # cancelled and forgotten
    assert "hung" not in plugin_names(daemon)
    assert_left_nothing(daemon)
    events = daemon.call(lambda c: c.list_events(types=["BUILD_CANCELLED"]))
    assert [e["payload"]["build"] for e in events] == [build["id"]]


@pytest.mark.parametrize(
    ("image", "code", "words"),
    [
        ("oci:{layout}:dotdot", "InvalidArgument", ".."),
        ("oci:{layout}:abslink", "InvalidArgument", "symbolic link"),
        ("oci:{layout}:arm64", "InvalidArgument", "linux/amd64"),
        ("oci:/nonexistent/layout:app", "NotFound", "does not exist"),
        ("docker://127.0.0.1:5999/volant/app:1", "DownloadFailed", "127.0.0.1:5999"),
        (f"docker://{HOST}/volant/missing:1", "NotFound", "missing"),
    ],
    ids=["dotdot", "abslink", "arm64", "no-layout", "registry-down", "no-image"],
)
def test_bad_images_fail_clearly_and_leave_nothing(
    daemon: Daemon, layout: Path, image: str, code: str, words: str
) -> None:
    image = image.format(layout=layout)
    proc = daemon.volar("plugins", "build", "--image", image, "--name", "bad", "--json")
    assert proc.returncode == 1, proc.stdout
    build = json.loads(proc.stdout)
    assert build["state"] == "failed"
    assert build["error_code"] == code, build
    assert words in build["error"], build
    assert f"build {build['id']} failed" in proc.stderr
    assert "bad" not in plugin_names(daemon)
    assert_left_nothing(daemon)


def zstd_layout(where: Path) -> Path:
    """An OCI layout whose one image (tag z) has a zstd-compressed layer, a format the build
    does not take."""
    layout = where / "zstd-layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:z"], check=True)
    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    tar = tar_bytes([file("hello.txt", b"hi\n")])
    packed = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True)
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    config_bytes = json.dumps(config).encode()
    manifest["config"] |= {"digest": put(config_bytes), "size": len(config_bytes)}
    manifest["layers"].append(
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
         "digest": put(packed.stdout), "size": len(packed.stdout)}
    )  # fmt: skip
    manifest_bytes = json.dumps(manifest).encode()
    entry |= {"digest": put(manifest_bytes), "size": len(manifest_bytes)}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_an_unsupported_layer_format_fails_clearly(daemon: Daemon, tmp_path: Path) -> None:
    layout = zstd_layout(tmp_path)
    proc = daemon.volar(
        "plugins", "build", "--image", f"oci:{layout}:z", "--name", "zstd", "--json"
    )
    assert proc.returncode == 1, proc.stdout
    build = json.loads(proc.stdout)
    assert build["error_code"] == "InvalidArgument", build
    assert "only tar and gzip-compressed tar layers are supported" in build["error"]
    assert "zstd" not in plugin_names(daemon)
    assert_left_nothing(daemon)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--image", "ftp://x/y"], "is not an image reference"),
        (["--image", APP, "--user", "no such user!"], "workload.user"),
        (["--image", APP, "--workdir", "relative"], "workload.workdir"),
        (["--image", APP, "--env", "1BAD=x"], "variable names"),
        (["--image", APP, "--name", "Not_A_Label"], "invalid plugin name"),
        (["--image", APP, "--name", "app"], "installed already"),
    ],
    ids=["ref", "user", "workdir", "env", "name", "taken"],
)
def test_bad_flags_are_refused_before_anything_starts(
    daemon: Daemon, argv: list[str], words: str
) -> None:
    if ("taken" in words or "installed already" in words) and "app" not in plugin_names(daemon):
        assert daemon.volar("plugins", "build", "--image", APP, "--name", "app").returncode == 0
    before = daemon.call(lambda c: c.list_builds())
    proc = daemon.volar("plugins", "build", *argv)
    assert proc.returncode == 1
    assert words in proc.stderr, proc.stderr
    assert daemon.call(lambda c: c.list_builds()) == before
    assert_left_nothing(daemon)


def test_unknown_build_is_not_found(daemon: Daemon) -> None:
    status, _ctype, body = raw(daemon, "GET", "/api/v1/builds/000000000000")
    assert status == 404
    assert body["code"] == "NotFound"
    status, _ctype, body = raw(daemon, "DELETE", "/api/v1/builds/000000000000")
    assert status == 404


def test_disk_full_during_a_build(registry: Registry, tmp_path: Path) -> None:
    """The image cache on a 256 KiB tmpfs: the pull runs out of room mid-way."""
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "volant-test", str(cache)],
        check=True,
    )
    try:
        d = start_daemon(
            registry.ns,
            tmp_path,
            # Another daemon in the same namespace: the unix socket only.
            daemon_settings(registry, **{"images.cache_dir": str(cache), "api.listen": ""}),
            plugins=(),
        )
        try:
            proc = d.volar("plugins", "build", "--image", APP, "--name", "full", "--json")
            assert proc.returncode == 1
            build = json.loads(proc.stdout)
            assert build["error_code"] == "Unavailable", build
            assert "no space left" in build["error"], build
            assert "full" not in plugin_names(d)
            assert_left_nothing(d)
            assert list(cache.rglob("*.part")) == []
            assert not (cache / "rootfs").exists() or list((cache / "rootfs").iterdir()) == []
        finally:
            stop_daemon(d)
    finally:
        subprocess.run(["umount", "--lazy", str(cache)], check=False)


def test_built_rootfs_is_the_image_unpacked_as_root(daemon: Daemon) -> None:
    """Whiteouts applied and owners kept: the worker ran umoci as root outside the daemon."""
    tree = erofs_tree(Path(manifest_of(daemon, "app")["rootfs"]["path"]))
    assert "etc/doomed.conf" not in tree  # whited out by the second layer
    assert tree["home/app/notes.txt"].owner == f"{APP_UID}:{APP_UID}"


def test_a_killed_volantd_leaves_no_build_behind(registry: Registry, tmp_path: Path) -> None:
    """SIGKILL volantd while its worker waits on a hung registry: the worker (in its own
    session) outlives it; the next start kills it and removes its directory, with events."""
    settings = daemon_settings(registry, **{"api.listen": ""})
    d = start_daemon(registry.ns, tmp_path, settings, plugins=())
    with silent_listener(d.ns, 5056):
        try:
            build = d.call(lambda c: c.build_plugin({"image": "docker://127.0.0.1:5056/x/y:1"}))
            deadline = time.monotonic() + 30
            while not worker_pids(d) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert worker_pids(d)
            d.proc.kill()
            d.proc.wait()
            assert worker_pids(d), "the worker outlived the daemon"
            assert build_records(d), "its records are there for the next start"
            d = start_daemon(registry.ns, tmp_path, settings, plugins=())
            assert_left_nothing(d)
            events = d.call(lambda c: c.list_events(types=["HOST_REPAIRED"]))
            kinds = sorted(e["payload"]["kind"] for e in events)
            assert kinds == ["build_dir", "build_unit"], events
            assert any(e["payload"]["name"] == build["id"] for e in events)
        finally:
            stop_daemon(d)


def test_ctrl_c_in_volar_cancels_the_build(daemon: Daemon) -> None:
    with silent_listener(daemon.ns, 5058):
        volar = subprocess.Popen(
            [str(BIN / "volar"), "--api", daemon.api, "plugins", "build",
             "--image", "docker://127.0.0.1:5058/hung/app:1", "--name", "interrupted"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not worker_pids(daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_pids(daemon), "the worker started"
        volar.send_signal(signal.SIGINT)
        _out, _err = volar.communicate(timeout=30)
    assert volar.returncode != 0
    events = daemon.call(lambda c: c.list_events(types=["BUILD_CANCELLED"]))
    assert "interrupted" in [e["payload"]["plugin"] for e in events]
    assert all(b["plugin"] != "interrupted" for b in daemon.call(lambda c: c.list_builds()))
    assert "interrupted" not in plugin_names(daemon)
    assert_left_nothing(daemon)


def test_the_nginx_example_builds_as_a_plugin(daemon: Daemon) -> None:
    """examples/images/nginx/README.md's command, on the recipe's layout (Debian's nginx)."""
    layout = nginx_layout()
    proc = daemon.volar(
        "plugins", "build", "--image", f"oci:{layout}:latest", "--name", "nginx",
        "--health-path", "/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = manifest_of(daemon, "nginx")
    workload = manifest["workload"]
    assert workload["user"] == "www-data"
    assert workload["entrypoint"][0].endswith("nginx")
    assert workload["base_url"] == "http://127.0.0.1:80"
    assert manifest["labels"] == {"oci.exposed-ports": "80/tcp"}
    assert_left_nothing(daemon)
