"""`volar completion` scripts, and names completed from the daemon (quietly, quickly)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.unit.volantd_standin import StandIn
from volant.cli.main import cli

pytestmark = pytest.mark.unit

VMS = ["db", "late-gated", "web"]  # the stand-in's, in name order


def _invoke(argv: list[str], env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    result = CliRunner(env=env).invoke(cli, argv, prog_name="volar")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _volar_completion volar"),
        ("zsh", "#compdef volar"),
        ("fish", "complete --no-files --command volar"),
    ],
)
def test_script_is_clicks_own(shell: str, marker: str) -> None:
    code, script, _err = _invoke(["completion", shell])
    assert code == 0
    assert marker in script
    assert f"_VOLAR_COMPLETE={shell}_complete" in script
    assert _invoke([], {"_VOLAR_COMPLETE": f"{shell}_source"})[1] == script


def test_help_says_where_the_script_goes() -> None:
    _code, out, _err = _invoke(["completion", "--help"])
    assert "~/.local/share/bash-completion/completions/volar" in out
    assert "~/.config/fish/completions/volar.fish" in out
    assert "fpath" in out


def complete(api: str | None, words: str, env: dict[str, str | None] | None = None) -> list[str]:
    """What bash would offer for the last word of `volar [--api API] words`."""
    line = ["volar", *(["--api", api] if api else []), *words.split(" ")]
    request: dict[str, str | None] = {
        "_VOLAR_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(line),
        "COMP_CWORD": str(len(line) - 1),
    }
    code, out, err = _invoke([], request | (env or {}))
    assert (code, err) == (0, "")  # completion never prints anything else
    return [item.split(",", 1)[1] for item in out.splitlines() if item]


@pytest.mark.parametrize(
    "words",
    [
        "vms get ",
        "vms delete ",
        "vms start ",
        "vms stop ",
        "vms restart ",
        "vms console ",
        "vms logs ",
        "vms action ",
        "vms openapi ",
        "events --vm ",
    ],
)
def test_vm_names(standin: tuple[StandIn, str], words: str) -> None:
    _daemon, api = standin
    assert complete(api, words) == VMS


def test_prefix_plugins_and_env(standin: tuple[StandIn, str]) -> None:
    _daemon, api = standin
    assert complete(api, "vms get w") == ["web"]
    assert complete(api, "plugins show ") == ["hello", "caddy"]
    assert complete(api, "plugins enable c") == ["caddy"]
    assert complete(api, "plugins remove h") == ["hello"]
    assert complete(api, "vms create web --plugin ") == ["hello", "caddy"]
    assert complete(None, "vms get ", {"VOLANT_API_BASE": api}) == VMS
    # A manifest is a file (or a URL): bash completes file names there itself.
    assert (
        _invoke(
            [],
            {
                "_VOLAR_COMPLETE": "bash_complete",
                "COMP_WORDS": "volar plugins install ./ma",
                "COMP_CWORD": "3",
            },
        )[1]
        == "file,./ma\n"
    )


def test_silent_and_quick_when_the_daemon_is_not_there(
    standin: tuple[StandIn, str], tmp_path: Path
) -> None:
    assert complete(f"unix:{tmp_path}/none.sock", "vms get ") == []
    assert complete("nonsense", "vms get ") == []
    bad_config = tmp_path / "volar.yaml"
    bad_config.write_text("api: [\n")
    assert complete(None, "vms get ", {"VOLANT_CONFIG": str(bad_config)}) == []
    _daemon, api = standin
    started = time.monotonic()
    assert complete(api, "vms get slow") == []  # the stand-in takes 5 s to answer that
    assert time.monotonic() - started < 3
