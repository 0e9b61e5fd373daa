"""OCI test images made from the host's own Debian packages, with umoci, cached under .cache/.

No image comes from the internet: the files are busybox-static's binary plus a passwd with a
non-root user, written as hand-made layer tars (tests/ocitar.py) and assembled into an OCI layout
with `umoci raw add-layer` and `umoci config`. One layout holds every test image as a tag:

- app: two layers; the second whites out /etc/doomed.conf and makes /srv/www opaque (its old
  page gone, a new one added), and adds a file owned by the user app (uid 1000);
- app2: app plus a third layer, so it shares two layers with app;
- arm64: app's layers under a linux/arm64 config;
- multi: an image index (manifest list) of app and arm64; arm-only: an index of arm64 alone;
- unique: one layer no other image has (tests corrupt it in the registry);
- dotdot, abslink, rellink: a layer that tries to leave the root.

The layout is rebuilt only when this file or busybox changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.ocitar import Entry, directory, file, symlink, tar_bytes

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "oci-test"
BUSYBOX = Path("/bin/busybox")
APP_UID = 1000
REF = "org.opencontainers.image.ref.name"
INDEX = "application/vnd.oci.image.index.v1+json"
# A path outside any image root that the escaping layers aim at; tests check it stays absent.
ESCAPE_TARGET = "/tmp/volant-oci-escape-target"

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\n"
APP_CONFIG = [
    "--config.entrypoint=/bin/busybox",
    "--config.entrypoint=httpd",
    "--config.cmd=-f",
    "--config.cmd=-p",
    "--config.cmd=8080",
    "--config.cmd=-h",
    "--config.cmd=/srv/www",
    "--config.env=PATH=/bin",
    "--config.env=GREETING=hello from layer two",
    "--config.workingdir=/home/app",
    "--config.user=app",
    "--config.exposedports=8080/tcp",
]


def base_layer() -> list[Entry]:
    busybox = BUSYBOX.read_bytes()
    return [
        directory("./"),
        directory("bin"),
        file("bin/busybox", busybox, 0o755),
        *(symlink(f"bin/{tool}", "busybox") for tool in ("sh", "id", "cat", "ls", "httpd")),
        directory("etc"),
        file("etc/passwd", PASSWD),
        file("etc/group", GROUP),
        file("etc/doomed.conf", b"whited out by layer 2\n"),
        directory("home"),
        directory("home/app", 0o750, APP_UID),
        file("home/app/notes.txt", b"layer 1, owned by app\n", 0o640, APP_UID),
        directory("srv"),
        directory("srv/www"),
        file("srv/www/old.html", b"hidden by layer 2's opaque whiteout\n"),
        directory("tmp", 0o1777),
    ]


def second_layer() -> list[Entry]:
    return [
        file("etc/.wh.doomed.conf"),
        directory("srv/www"),
        file("srv/www/.wh..wh..opq"),
        file("srv/www/index.html", b"<h1>volant test image</h1>\n", 0o644, APP_UID),
        file("home/app/added.txt", b"layer 2, owned by app\n", 0o600, APP_UID),
    ]


ESCAPES: dict[str, list[list[Entry]]] = {
    "dotdot": [[file(f"../../../../..{ESCAPE_TARGET}/dotdot", b"escaped\n")]],
    # The link in one layer, the write through it in the next, as an attacker would split it.
    "abslink": [[symlink("evil", ESCAPE_TARGET)], [file("evil/abslink", b"escaped\n")]],
    "rellink": [
        [symlink("evil", "../../../../../../.." + ESCAPE_TARGET)],
        [file("evil/rellink", b"escaped\n")],
    ],
}


def _umoci(*argv: str) -> None:
    subprocess.run(["umoci", *argv], check=True, capture_output=True)


def _add_layer(layout: Path, tag: str, entries: list[Entry], work: Path) -> None:
    tar = work / "layer.tar"
    tar.write_bytes(tar_bytes(entries))
    _umoci("raw", "add-layer", "--image", f"{layout}:{tag}", str(tar))


def _index(layout: Path, name: str, tags: list[str]) -> None:
    """Add an image index over the manifests tagged `tags`, tagged `name` (umoci makes none)."""
    index_path = layout / "index.json"
    top = json.loads(index_path.read_text())
    by_tag = {m["annotations"][REF]: m for m in top["manifests"]}
    entries = []
    for tag in tags:
        descriptor = dict(by_tag[tag])
        manifest = _blob(layout, descriptor["digest"])
        config = _blob(layout, manifest["config"]["digest"])
        descriptor.pop("annotations")
        descriptor["platform"] = {"os": config["os"], "architecture": config["architecture"]}
        entries.append(descriptor)
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(body)
    top["manifests"].append(
        {"mediaType": INDEX, "digest": f"sha256:{digest}", "size": len(body),
         "annotations": {REF: name}}
    )  # fmt: skip
    index_path.write_text(json.dumps(top))


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text()
    )
    return data


def _build(layout: Path, work: Path) -> None:
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", f"{layout}:app")
    _add_layer(layout, "app", base_layer(), work)
    _add_layer(layout, "app", second_layer(), work)
    _umoci("config", "--image", f"{layout}:app", *APP_CONFIG)
    _umoci("config", "--image", f"{layout}:app", "--tag=arm64", "--architecture=arm64")
    _index(layout, "multi", ["arm64", "app"])
    _index(layout, "arm-only", ["arm64"])
    _umoci("tag", "--image", f"{layout}:app", "app2")
    _add_layer(layout, "app2", [file("app2.txt", b"third layer\n")], work)
    _umoci("new", "--image", f"{layout}:unique")
    _add_layer(layout, "unique", [file("unique.txt", b"only in this image\n" * 1000)], work)
    for name, layers in ESCAPES.items():
        _umoci("new", "--image", f"{layout}:{name}")
        for entries in layers:
            _add_layer(layout, name, entries, work)


def image_layout() -> Path:
    """The OCI layout holding every test image (see the module docstring for its tags)."""
    key = hashlib.sha256(Path(__file__).read_bytes() + BUSYBOX.read_bytes()).hexdigest()[:16]
    layout = CACHE / f"layout-{key}"
    if layout.is_dir():
        return layout
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        _build(work / "layout", work)
        for old in CACHE.glob("layout-*"):
            shutil.rmtree(old)
        (work / "layout").rename(layout)
    return layout
