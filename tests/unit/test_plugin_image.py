"""A plugin's own cpio: reproducible, readable by cpio tools, pinned by its manifest, bootable
appended to the agent image."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.build_guest import build_plugins
from scripts.guest.agent_image import WORKLOAD_MODULES, input_files
from scripts.guest.cpio import Tree, cpio_newc, read_newc
from scripts.guest.plugin_image import concat_initramfs, plugin_cpio, write_plugin_cpio

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "plugins" / "hello"
HELLO_FILES = ["opt", "opt/volant", "opt/volant/plugins", "opt/volant/plugins/hello",
               "opt/volant/plugins/hello/app.py"]  # fmt: skip


def plugin_copy(tmp_path: Path, name: str = "hello") -> Path:
    """hello plus everything that must stay out of its archive, with odd mtimes and modes."""
    copy = tmp_path / name
    shutil.copytree(HELLO, copy, ignore=shutil.ignore_patterns("*.cpio"))
    (copy / "bin").mkdir()
    (copy / "bin" / "run.sh").write_text("#!/bin/sh\nexec python3 ../app.py\n")
    (copy / "bin" / "run.sh").chmod(0o700)
    (copy / "manifest.yaml").write_text("name: hello\n")
    (copy / "manifest.json.sig").write_text("signature\n")
    (copy / "README").write_text("notes\n")
    (copy / "old.cpio").write_bytes(b"070701")
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (copy / ".app.py.swp").write_bytes(b"\0")
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_234_567_890))
    (copy / "app.py").chmod(0o600)
    return copy


def test_two_builds_and_two_checkouts_give_the_same_bytes(tmp_path: Path) -> None:
    one, two = plugin_cpio(HELLO), plugin_cpio(HELLO)
    assert one == two
    copy = plugin_copy(tmp_path)
    (copy / "bin" / "run.sh").unlink()
    (copy / "bin").rmdir()
    # Other mtimes, modes and junk files in another checkout change nothing.
    assert plugin_cpio(copy) == one
    assert len(one) % 512 == 0


def test_contents_modes_and_exclusions(tmp_path: Path) -> None:
    entries = read_newc(plugin_cpio(plugin_copy(tmp_path)))
    by_path = {e.path: e for e in entries}
    assert [e.path for e in entries] == sorted([
        *HELLO_FILES, "opt/volant/plugins/hello/bin", "opt/volant/plugins/hello/bin/run.sh"
    ])  # fmt: skip
    assert stat.S_IMODE(by_path["opt/volant/plugins/hello/app.py"].mode) == 0o644
    assert stat.S_IMODE(by_path["opt/volant/plugins/hello/bin/run.sh"].mode) == 0o755
    assert stat.S_ISDIR(by_path["opt/volant/plugins/hello/bin"].mode)
    assert by_path["opt/volant/plugins/hello/app.py"].data == (HELLO / "app.py").read_bytes()


def test_busybox_cpio_lists_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "hello.cpio"
    archive.write_bytes(plugin_cpio(HELLO))
    tools = [[tool, "-t"] for tool in ("cpio",) if shutil.which(tool)]
    if shutil.which("busybox"):
        tools.append(["busybox", "cpio", "-t"])
    if not tools:
        pytest.skip("neither cpio nor busybox is installed")
    for argv in tools:
        with archive.open("rb") as fh:
            listing = subprocess.run(argv, stdin=fh, capture_output=True, text=True, check=True)
        assert listing.stdout.split() == HELLO_FILES, argv


def test_manifest_pins_the_archive_it_names() -> None:
    manifest = json.loads((HELLO / "manifest.json").read_text())
    assert manifest["initramfs"]["path"] == "hello.cpio"
    fresh = hashlib.sha256(plugin_cpio(HELLO)).hexdigest()
    assert manifest["initramfs"]["checksum"] == f"sha256:{fresh}", (
        "examples/plugins/hello changed: put the new checksum into its manifest.json"
    )


def test_build_plugins_writes_each_archive_once(tmp_path: Path) -> None:
    plugin = plugin_copy(tmp_path / "plugins")
    (tmp_path / "plugins" / "not-a-plugin").mkdir()
    built = build_plugins(tmp_path / "plugins")
    assert built == [plugin / "hello.cpio"]
    assert built[0].read_bytes() == plugin_cpio(plugin)
    before = built[0].stat().st_mtime_ns
    os.utime(built[0], ns=(before - 10**9, before - 10**9))
    assert write_plugin_cpio(plugin) == built[0]
    assert built[0].stat().st_mtime_ns == before - 10**9  # unchanged bytes are not rewritten


def test_concatenation_reads_as_one_tree(tmp_path: Path) -> None:
    base = Tree()
    base.file("init", b"#!/bin/sh\n", 0o755)
    base.dir("opt")
    (tmp_path / "agent.img").write_bytes(cpio_newc(base.entries.values()))
    # A part that does not end 4-byte aligned gets padded, so the next header stays aligned.
    (tmp_path / "odd.img").write_bytes(cpio_newc(base.entries.values()) + b"\0\0\0")
    (tmp_path / "hello.cpio").write_bytes(plugin_cpio(HELLO))
    parts = [tmp_path / "agent.img", tmp_path / "odd.img", tmp_path / "hello.cpio"]
    out = concat_initramfs(tmp_path / "boot.img", parts)
    assert out.read_bytes().startswith((tmp_path / "agent.img").read_bytes())
    paths = [e.path for e in read_newc(out.read_bytes())]
    assert paths == ["init", "opt", "init", "opt", *HELLO_FILES]


def test_agent_image_no_longer_bundles_examples() -> None:
    assert not [p for p in input_files() if "examples" in p.parts]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            found.add(node.module)
    return found


def test_hello_imports_only_what_the_agent_image_promises() -> None:
    # hello runs on the agent image's trimmed python3: its stdlib must be kept there.
    promised = set(WORKLOAD_MODULES) | set(sys.builtin_module_names)
    assert _imports(HELLO / "app.py") <= promised
