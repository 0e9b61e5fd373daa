"""The Debian source package agrees with the project: its version, and the files it installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DEBIAN = ROOT / "debian"
# Made during the build: by debian/generate, or by scripts/build_guest.py (`make guest`).
GENERATED = ("debian/generated/", "examples/plugins/hello/hello.cpio")

pytestmark = pytest.mark.unit


def test_changelog_version_is_the_project_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"volant \((?P<version>[^)]+)\) \S+; urgency=\w+", first)
    assert match, first
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert match["version"] == project["version"]


def test_installed_sources_exist() -> None:
    for line in (DEBIAN / "volant.install").read_text().splitlines():
        source, _target = line.split()
        if source.startswith(GENERATED):
            continue
        assert list(ROOT.glob(source)), f"debian/volant.install: {source} matches nothing"


def test_settings_defaults_point_into_the_package() -> None:
    from volant.config import SETTINGS

    defaults = {s.name: str(s.default) for s in SETTINGS}
    assert defaults["runtime.kernel"] == "/usr/lib/volant/guest/vmlinuz"
    assert defaults["runtime.initramfs"] == "/usr/lib/volant/guest/initramfs.img"
    rules = (DEBIAN / "rules").read_text()
    assert "$(DESTDIR)/usr/lib/volant/guest/vmlinuz" in rules
    assert "$(DESTDIR)/usr/lib/volant/guest/initramfs.img" in rules
    assert defaults["plugins.trusted_keys_dir"] == "/etc/volant/trusted-keys.d"
    assert "etc/volant/trusted-keys.d" in (DEBIAN / "volant.dirs").read_text().split()


def test_every_dependency_is_pinned_within_its_range() -> None:
    """constraints.txt pins each requirement of pyproject.toml to a version it allows, so the
    .deb's virtualenv and `make venv` install what CI passed with."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(spec)
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned), f"{requirement.name}=={pinned} vs {spec}"
    assert "--constraint=$(CURDIR)/constraints.txt" in (DEBIAN / "rules").read_text()
