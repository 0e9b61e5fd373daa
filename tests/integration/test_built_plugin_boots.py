"""A plugin `volar plugins build` made from an OCI image boots: the test image's busybox httpd
serves its page over the bridge, as the image's non-root user, with the image's whiteout
applied. The image comes from a real registry in the daemon's network namespace."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.integration.daemon import (
    GUEST_DIR,
    Daemon,
    build_guest,
    start_daemon,
    stop_daemon,
    wait_status,
)
from tests.integration.oci_images import APP_UID, image_layout
from tests.integration.registry import HOST, serving_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="netns, taps, umoci and QEMU need root"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    layout = image_layout()
    with serving_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(layout, "app", "volant/app:1")
        settings = {
            "images.authfile": str(reg.authfile),
            "images.cert_dir": str(reg.cert_dir),
            "runtime.initramfs": str(GUEST_DIR / "agent-initramfs.img"),
            "runtime.boot_timeout": 90,
            "vm.disk_size_mb": 256,
        }
        d = start_daemon(reg.ns, tmp_path_factory.mktemp("volantd"), settings, plugins=())
        try:
            yield d
        finally:
            stop_daemon(d)


def test_a_built_plugin_serves_its_page_as_the_image_user(daemon: Daemon) -> None:
    built = daemon.volar(
        "plugins", "build", "--image", f"docker://{HOST}/volant/app:1", "--name", "web",
        # The image serves on 8080, which is the agent's own port in the guest: move it.
        "--arg", "-f", "--arg", "-p", "--arg", "8081", "--arg", "-h", "--arg", "/srv/www",
        "--base-url", "http://127.0.0.1:8081", "--health-path", "/",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    created = daemon.volar("vms", "create", "web1", "--plugin", "web")
    assert created.returncode == 0, created.stderr
    vm = wait_status(daemon, "web1", "running", timeout=120)
    page = daemon.http_get(f"http://{vm['ip_address']}:8081/", timeout=60)
    assert page == "<h1>volant test image</h1>\n"
    # The agent resolved the image's user (app) against the image's /etc/passwd.
    status = daemon.agent_curl("web1", vm["ip_address"], "/v1/status")
    assert status.returncode == 0, status.stderr
    user = json.loads(status.stdout)["workload"]["user"]
    assert (user["name"], user["uid"]) == ("app", APP_UID), status.stdout
    # Layer 2's opaque whiteout hid /srv/www/old.html.
    code = daemon.in_ns(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
        f"http://{vm['ip_address']}:8081/old.html",
    )  # fmt: skip
    assert code.stdout == "404"
    assert daemon.volar("vms", "delete", "web1").returncode == 0
