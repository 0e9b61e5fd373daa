"""The agent image builder's pure parts, and (slow tier) that it is reproducible."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from scripts.guest.common import BuildError
from scripts.guest.cpio import Tree
from scripts.guest.python import add_libraries, elf_dynamic, stdlib_sources

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_elf_dynamic_reads_the_interpreters_needs() -> None:
    needed, interp = elf_dynamic(Path(sys.executable).resolve().read_bytes())
    assert interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in needed
    with pytest.raises(BuildError):
        elf_dynamic(b"#!/bin/sh\n" * 10)


@pytest.mark.unit
def test_library_closure_from_host_libraries(tmp_path: Path) -> None:
    # The host's / stands in for unpacked packages: same layout (lib/x86_64-linux-gnu).
    tree = Tree()
    libs = add_libraries(tree, [Path("/")], [Path("/bin/ls").read_bytes()])
    assert "libc.so.6" in libs
    assert "lib/x86_64-linux-gnu/libc.so.6" in tree.entries
    assert "lib64/ld-linux-x86-64.so.2" in tree.entries


@pytest.mark.unit
def test_stdlib_trim_drops_tests_and_idle(tmp_path: Path) -> None:
    for rel in ("os.py", "asyncio/base_events.py", "test/test_os.py", "idlelib/run.py",
                "ctypes/test/test_x.py", "email/__pycache__/x.py"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    kept = [shown for _src, shown in stdlib_sources(tmp_path)]
    assert kept == ["/usr/lib/python3.11/asyncio/base_events.py", "/usr/lib/python3.11/os.py"]


@pytest.mark.integration
def test_agent_image_is_reproducible(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    from scripts.guest.agent_image import IMAGE, build_agent_image

    cache = ROOT / ".cache"
    digests = []
    for run in ("one", "two"):
        meta = build_agent_image(tmp_path / run, cache)
        data = (tmp_path / run / IMAGE).read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        assert meta["sha256"] == digests[-1]
    assert digests[0] == digests[1]
    # A second call with unchanged inputs keeps the image (cached by the inputs' digest).
    before = (tmp_path / "one" / IMAGE).stat().st_mtime_ns
    build_agent_image(tmp_path / "one", cache)
    assert (tmp_path / "one" / IMAGE).stat().st_mtime_ns == before
