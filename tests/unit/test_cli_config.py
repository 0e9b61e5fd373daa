"""Where volar finds volantd and its API key: --api, the environment, the user's and the
system's volar.yaml, in that order; bad files are one line and exit status 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from volant.cli import config as cfg
from volant.cli.config import ConfigError, Settings, check_api, resolve, user_file
from volant.cli.main import cli
from volant.client.http import DEFAULT_API

pytestmark = pytest.mark.unit


@pytest.fixture
def system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/etc/volant/volar.yaml, moved under tmp_path for the test."""
    path = tmp_path / "etc" / "volar.yaml"
    path.parent.mkdir()
    monkeypatch.setattr(cfg, "SYSTEM_FILE", path)
    return path


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), **extra}


def test_defaults_without_files(tmp_path: Path, system_file: Path) -> None:
    assert resolve(None, _env(tmp_path), system_file) == Settings(DEFAULT_API, "")


def test_each_key_from_the_first_place_that_has_it(tmp_path: Path, system_file: Path) -> None:
    _write(system_file, "api: unix:/run/volant/volantd.sock\napi_key: system-key\n")
    env = _env(tmp_path)
    assert resolve(None, env, system_file) == Settings(
        "unix:/run/volant/volantd.sock", "system-key"
    )

    user = _write(tmp_path / "home" / ".config" / "volant" / "volar.yaml", "api_key: user-key\n")
    assert resolve(None, env, system_file) == Settings("unix:/run/volant/volantd.sock", "user-key")

    user.write_text("api: http://10.0.0.1:7777\n")  # the user's api, the system's key
    assert resolve(None, env, system_file) == Settings("http://10.0.0.1:7777", "system-key")

    env["VOLANT_API_KEY"] = "env-key"
    assert resolve("http://127.0.0.2:7777", env, system_file) == Settings(
        "http://127.0.0.2:7777", "env-key"
    )


def test_user_file_locations(tmp_path: Path) -> None:
    home = str(tmp_path)
    assert user_file({"HOME": home}) == (tmp_path / ".config/volant/volar.yaml", False)
    assert user_file({"HOME": home, "XDG_CONFIG_HOME": "/x"}) == (
        Path("/x/volant/volar.yaml"),
        False,
    )
    # A relative XDG_CONFIG_HOME is invalid by the XDG spec and ignored.
    assert user_file({"HOME": home, "XDG_CONFIG_HOME": "rel"})[0] == (
        tmp_path / ".config/volant/volar.yaml"
    )
    assert user_file({"HOME": home, "VOLANT_CONFIG": "/y.yaml"}) == (Path("/y.yaml"), True)


def test_volant_config_replaces_the_user_file(tmp_path: Path, system_file: Path) -> None:
    _write(tmp_path / "home" / ".config" / "volant" / "volar.yaml", "api_key: ignored\n")
    named = _write(tmp_path / "mine.yaml", "api_key: mine\n")
    assert resolve(None, _env(tmp_path, VOLANT_CONFIG=str(named)), system_file).api_key == "mine"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(None, _env(tmp_path, VOLANT_CONFIG=str(tmp_path / "none.yaml")), system_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api: [unclosed\n", "is not valid YAML (line 2)"),
        ("- api\n", "is not a mapping"),
        ("api-key: x\n", "unknown key 'api-key'"),
        ("api_key: 42\n", "api_key must be a non-empty string"),
        ("api: ''\n", "api must be a non-empty string"),
        ("api: ftp://host\n", "api: 'ftp://host' is not http://host:port or unix:/path"),
    ],
)
def test_malformed_files(tmp_path: Path, system_file: Path, text: str, message: str) -> None:
    _write(system_file, text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(None, _env(tmp_path), system_file)


def test_empty_file_is_no_settings(tmp_path: Path, system_file: Path) -> None:
    _write(system_file, "# nothing yet\n")
    assert resolve(None, _env(tmp_path), system_file) == Settings(DEFAULT_API, "")


def test_a_key_everyone_can_read_is_a_warning(tmp_path: Path, system_file: Path) -> None:
    _write(system_file, "api_key: k\n", mode=0o644)
    assert resolve(None, _env(tmp_path), system_file).warnings == (
        f"{system_file} holds api_key and every user can read it; `chmod o-r {system_file}`",
    )
    system_file.chmod(0o640)  # root:volant 0640 is how a host shares a key with its group
    assert resolve(None, _env(tmp_path), system_file).warnings == ()
    _write(system_file, "api: unix:/s\n", mode=0o644)  # no key in it: nothing to hide
    assert resolve(None, _env(tmp_path), system_file).warnings == ()


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:7777", "https://volant.example:443/prefix", "unix:/run/v.sock", "unix:v"],
)
def test_good_api_values(value: str) -> None:
    assert check_api(value) == value


@pytest.mark.parametrize(
    "value", ["127.0.0.1:7777", "unix:", "http://", "http://host:99999", "ws://h:1", "foo"]
)
def test_bad_api_values(value: str) -> None:
    with pytest.raises(ValueError, match="is not http://host:port or unix:/path"):
        check_api(value)


CLEAN_ENV: dict[str, str | None] = dict.fromkeys(
    ("XDG_CONFIG_HOME", "VOLANT_CONFIG", "VOLANT_API_KEY", "VOLANT_API_BASE")
)


def _volar(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    env = CLEAN_ENV | {"HOME": str(tmp_path / "home")}
    result = CliRunner(env=env).invoke(cli, list(argv), prog_name="volar")
    return result.exit_code, result.stdout, result.stderr


def test_cli_uses_the_file_and_warns_once(tmp_path: Path, system_file: Path) -> None:
    sock = tmp_path / "none.sock"
    _write(system_file, f"api: unix:{sock}\napi_key: k\n", mode=0o644)
    code, out, err = _volar(tmp_path, "vms", "list")
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0] == (
        f"volar: warning: {system_file} holds api_key and every user can read it; "
        f"`chmod o-r {system_file}`"
    )
    assert lines[1] == f"volar: error: cannot reach volantd at unix:{sock}: no such socket"
    assert len(lines) == 3


def test_cli_bad_file_is_exit_1_with_a_hint(tmp_path: Path, system_file: Path) -> None:
    _write(system_file, "api: [\n")
    code, out, err = _volar(tmp_path, "vms", "list")
    assert (code, out) == (1, "")
    error, hint = err.splitlines()
    assert error.startswith(f"volar: error: config file {system_file} is not valid YAML (line 2)")
    assert hint == f"hint: {cfg.FILE_HINT}"
    # Commands that never talk to the daemon do not read it.
    assert _volar(tmp_path, "completion", "bash")[0] == 0
    assert _volar(tmp_path, "plugins", "keygen", "k", "--dir", str(tmp_path / "keys"))[0] == 0


def test_unreadable_file_is_exit_1(tmp_path: Path, system_file: Path) -> None:
    system_file.mkdir()
    code, out, err = _volar(tmp_path, "vms", "list")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"volar: error: cannot read config file {system_file}: is a directory",
        "hint: fix its permissions (is it for group volant?) or move it away",
    ]


def test_the_system_socket_is_the_default_when_it_is_there(tmp_path: Path) -> None:
    import socket

    from volant.cli.config import default_api

    path = tmp_path / "volantd.sock"
    assert default_api(path) == DEFAULT_API
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert default_api(path) == f"unix:{path}"
    path.unlink()
    path.write_text("not a socket")
    assert default_api(path) == DEFAULT_API
