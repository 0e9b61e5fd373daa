"""Where volar finds volantd and its API key: the command line, the environment, config files.

Each key is taken from the first place that has it: `--api` or $VOLANT_API_BASE (the key:
$VOLANT_API_KEY), then the user's file ($VOLANT_CONFIG, else
${XDG_CONFIG_HOME:-~/.config}/volant/volar.yaml), then the system's /etc/volant/volar.yaml,
then the default. A file is YAML with the keys `api` (http://host:port or unix:/path) and
`api_key`. A file that is missing is skipped (except one $VOLANT_CONFIG names); one that
cannot be read or parsed is an error, never silently ignored.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from volant.client.http import DEFAULT_API

API_ENV = "VOLANT_API_BASE"
KEY_ENV = "VOLANT_API_KEY"
FILE_ENV = "VOLANT_CONFIG"
SYSTEM_FILE = Path("/etc/volant/volar.yaml")
# The system service's socket: polkit judges its callers (group volant may change things),
# where the TCP port only knows the API key.
SYSTEM_SOCKET = Path("/run/volant/volantd.sock")
KEYS = ("api", "api_key")
FILE_HINT = "volar.yaml holds `api: http://host:port` (or unix:/path) and `api_key: KEY`"

PRECEDENCE = f"""\b
Where volar finds volantd, first match wins:
  --api, ${API_ENV}, `api` in the user's config file (${FILE_ENV}, else
  ${{XDG_CONFIG_HOME:-~/.config}}/volant/volar.yaml), `api` in {SYSTEM_FILE},
  then unix:{SYSTEM_SOCKET} when it exists, else {DEFAULT_API}.
The API key (sent over TCP): ${KEY_ENV}, then `api_key` in the same files.
Exit status: 0 ok, 1 error, 2 usage error, 130 interrupted."""


class ConfigError(Exception):
    """A config file volar cannot use: one line, and a hint."""

    def __init__(self, message: str, hint: str = FILE_HINT) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Settings:
    """How to reach volantd. warnings: what the operator should hear once (a key file that
    everyone can read)."""

    api: str
    api_key: str
    warnings: tuple[str, ...] = ()


def check_api(value: str) -> str:
    """value when it is an address volar can use: http(s)://host[:port][/prefix] or unix:/path;
    ValueError (its message for people) otherwise."""
    if value.startswith("unix:"):
        if len(value) > len("unix:"):
            return value
    else:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 -- reading it is the check: ValueError when out of range
        except ValueError:
            pass
        else:
            if parts.scheme in ("http", "https") and parts.hostname:
                return value
    raise ValueError(f"{value!r} is not http://host:port or unix:/path")


def user_file(env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The user's config file and whether it was named explicitly ($VOLANT_CONFIG)."""
    if env.get(FILE_ENV):
        return Path(env[FILE_ENV]), True
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "volant" / "volar.yaml", False
    home = env.get("HOME") or ""
    if not home:
        try:
            home = str(Path.home())
        except RuntimeError:  # no $HOME and no passwd entry: there is no user file
            return None, False
    return Path(home) / ".config" / "volant" / "volar.yaml", False


def read_file(path: Path, *, explicit: bool = False) -> dict[str, str]:
    """The keys a config file sets; {} when it does not exist (unless explicit)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} (${FILE_ENV}) does not exist",
                f"create it, or unset {FILE_ENV}",
            ) from None
        return {}
    except PermissionError as exc:
        if not explicit and not _visible(path):
            return {}  # e.g. $HOME of another user (sudo -u): no file this user could have
        raise _unreadable(path, exc) from None
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    return _parse(path, text)


def _visible(path: Path) -> bool:
    try:
        path.stat()
    except PermissionError:
        return False
    return True


def _unreadable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot read config file {path}: {(exc.strerror or str(exc)).lower()}",
        "fix its permissions (is it for group volant?) or move it away",
    )


def _parse(path: Path, text: str) -> dict[str, str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} is not a mapping of keys to values")
    unknown = sorted(str(key) for key in data if key not in KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}")
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config file {path}: {key} must be a non-empty string")
    if "api" in data:
        try:
            check_api(data["api"])
        except ValueError as exc:
            raise ConfigError(f"config file {path}: api: {exc}") from None
    return dict(data)


def _everyone_reads(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def default_api(socket: Path = SYSTEM_SOCKET) -> str:
    """The system service's unix socket when it is there, else the TCP default."""
    try:
        return f"unix:{socket}" if socket.is_socket() else DEFAULT_API
    except OSError:  # /run/volant is 0755, but a stricter host may hide it
        return DEFAULT_API


def resolve(
    api_option: str | None, env: Mapping[str, str], system_file: Path | None = None
) -> Settings:
    """Settings from api_option (--api or $VOLANT_API_BASE, already checked), env and the
    files (system_file: SYSTEM_FILE unless given); ConfigError when a file is unusable."""
    system_file = SYSTEM_FILE if system_file is None else system_file
    path, explicit = user_file(env)
    layers = [(system_file, read_file(system_file))]
    if path is not None:
        layers.append((path, read_file(path, explicit=explicit)))
    found: dict[str, tuple[str, Path]] = {}
    for source, values in layers:  # the user's file comes last and wins
        found |= {key: (value, source) for key, value in values.items()}
    api = api_option or (found["api"][0] if "api" in found else default_api())
    if env.get(KEY_ENV):
        return Settings(api, env[KEY_ENV])
    if "api_key" not in found:
        return Settings(api, "")
    key, source = found["api_key"]
    warnings: tuple[str, ...] = ()
    if _everyone_reads(source):
        # Like ssh with a private key, but only a warning: group-readable is how a host shares
        # one key with group volant.
        warnings = (f"{source} holds api_key and every user can read it; `chmod o-r {source}`",)
    return Settings(api, key, warnings)
