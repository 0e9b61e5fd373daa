"""The nginx example image recipe builds, imports, and its workload serves a page as www-data.

Runs examples/images/nginx/build.sh (cached under .cache/, minutes on the first run), imports
the layout, and starts the image's own argv from the erofs, chrooted as the image's user, in
new mount and network namespaces; the page is fetched over the namespace's loopback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.integration.erofs import erofs_read, erofs_tree
from tests.integration.example_image import RECIPE, nginx_layout
from volant.storage import import_image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap, umoci and mounts need root"),
]

WWW_DATA = 33  # Debian's fixed uid and gid for www-data (base-passwd)

# Mount the rootfs read-only with a tmpfs /tmp, as the guest agent will, start the workload as
# the image's user, fetch the page, and report the uid the server runs as.
_RUN = """
set -e
ip link set lo up
echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start
mount -t erofs -o loop,ro "$1" "$2"
mount -t tmpfs tmpfs "$2/tmp"
mount -t proc proc "$2/proc"
mount --rbind /dev "$2/dev"
chroot --userspec={uid}:{uid} "$2" {argv} > "$3" 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 200); do
    curl -s --max-time 5 http://127.0.0.1:80/ && break
    kill -0 $server
    sleep 0.1
done
echo
echo "uid $(stat -c %u /proc/$server)"
"""


async def test_nginx_example(tmp_path: Path) -> None:
    layout = nginx_layout()
    done = await import_image(
        f"oci:{layout}:latest",
        cache_dir=tmp_path / "cache",
        out=tmp_path / "nginx.erofs",
        work_dir=tmp_path / "work",
    )
    work = done.image.workload
    assert work.argv == ("/usr/sbin/nginx", "-e", "stderr", "-g", "daemon off;")
    assert (work.user, work.workdir, work.exposed_ports) == (
        "www-data",
        "/var/www/site",
        ("80/tcp",),
    )
    assert len(done.image.layers) == 2

    image = tmp_path / "nginx.erofs"
    tree = erofs_tree(image)
    assert tree["usr/sbin/nginx"].kind == "f"
    assert "etc/nginx/sites-enabled/default" not in tree  # whited out by the site layer
    assert "etc/nginx/sites-available/default" in tree  # the package's file, still in layer 1
    assert re.search(rb"^www-data:[^:]*:33:33:", erofs_read(image, "etc/passwd"), re.M)

    log = tmp_path / "nginx.log"
    (tmp_path / "mnt").mkdir()
    script = _RUN.format(uid=WWW_DATA, argv=shlex.join(work.argv))
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(image), str(tmp_path / "mnt"), str(log)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr}\nnginx said:\n{log.read_text()}"
    page = (RECIPE / "index.html").read_text()
    assert page in proc.stdout
    assert f"uid {WWW_DATA}" in proc.stdout
