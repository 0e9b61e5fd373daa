"""volar's exit statuses (0 ok, 1 error, 2 usage, 130 Ctrl-C) and its one-line errors, with
tracebacks only under --debug."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.run_volar import volar
from tests.unit.volantd_standin import not_volantd, serving
from volant.client import ApiError, VolantClient
from volant.plugins import signing

pytestmark = pytest.mark.unit

BUG_HINT = "hint: this is a bug in volar; --debug shows where it happened"


def test_version() -> None:
    code, out, _err = volar("--version")
    assert code == 0
    assert re.fullmatch(r"volar \S+\n", out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api", "localhost:7777", "vms", "list"], "'localhost:7777' is not http://host:port"),
        (["--api", "unix:", "vms", "list"], "'unix:' is not http://host:port"),
        (["vms", "create", "x", "--cpu", "two"], "'two' is not a valid integer"),
        (["vms", "start"], "Missing argument 'VM'"),
        # Checked before volantd is asked (none runs here).
        (["vms", "create", "Web_1", "--plugin", "hello"], "'Web_1' is not a DNS label"),
        (["completion", "tcsh"], "'tcsh' is not one of 'bash', 'zsh', 'fish'"),
        (["system", "nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, out, err = volar(*argv)
    assert (code, out) == (2, "")
    error, hint = err.splitlines()
    assert error.startswith("volar: error: ")
    assert message in error
    assert re.fullmatch(r"hint: Usage: volar .*; `volar.*--help` says more", hint)


def test_no_arguments_is_help() -> None:
    code, out, err = volar()
    assert (code, out) == (2, "")
    assert err.startswith("Usage: volar [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in err


def test_bad_env_api_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLANT_API_BASE", "nowhere")
    code, _out, err = volar("vms", "list")
    assert code == 2
    assert "(env var: 'VOLANT_API_BASE')" in err


@pytest.fixture
def other_server(tmp_path: Path) -> Any:
    with serving(not_volantd(), tmp_path / "other.sock") as api:
        yield api


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["system", "status"], "unexpected answer from {api}: GET /api/v1/system/status answered "
         "text/html, not JSON"),
        (["vms", "list"], "unexpected answer from {api}: GET /api/v1/vms answered no 'vms' list"),
        (["plugins", "list"], "HTTP 404: <html> hi </html>"),
    ],
)  # fmt: skip
def test_something_else_answering(other_server: str, argv: list[str], error: str) -> None:
    code, out, err = volar("--api", other_server, *argv)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "volar: error: " + error.format(api=other_server),
        "hint: is --api (or VOLANT_API_BASE) pointing at volantd?",
    ]


def _raise(exc: BaseException) -> Any:
    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return failing


def test_unexpected_exception_is_one_line_and_debug_adds_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(VolantClient, "list_vms", _raise(RuntimeError("boom")))
    code, out, err = volar("vms", "list")
    assert (code, out) == (1, "")
    assert err.splitlines() == ["volar: error: unexpected RuntimeError: boom", BUG_HINT]
    code, _out, err = volar("--debug", "vms", "list")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-2:] == ["volar: error: unexpected RuntimeError: boom", BUG_HINT]


def test_daemon_error_with_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    error = ApiError(409, "InvalidState", "VM 'web' is stopped", "`volar vms start web`", "name")
    monkeypatch.setattr(VolantClient, "get_vm", _raise(error))
    code, _out, err = volar("vms", "get", "web")
    assert (code, err) == (
        1,
        "volar: error: VM 'web' is stopped (field name)\nhint: `volar vms start web`\n",
    )
    code, _out, err = volar("--debug", "vms", "get", "web")
    assert "Traceback" in err
    assert err.endswith(
        "volar: error: VM 'web' is stopped (field name)\nhint: `volar vms start web`\n"
    )


def test_ctrl_c_is_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(VolantClient, "list_vms", _raise(KeyboardInterrupt()))
    assert volar("vms", "list")[0] == 130

    def interrupted(*_args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(signing, "generate_keypair", interrupted)  # no daemon in that path
    code, _out, err = volar("plugins", "keygen", "k", "--dir", str(tmp_path))
    assert (code, "Aborted" in err) == (130, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["vms", "list"],
        ["vms", "create", "web"],
        ["vms", "start", "web"],
        ["system", "status"],
        ["system", "info", "--json"],
        ["events"],
    ],
)
def test_connection_refused_on_tcp(argv: list[str]) -> None:
    code, out, err = volar("--api", "http://127.0.0.1:9", *argv)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "volar: error: cannot reach volantd at http://127.0.0.1:9: connection refused",
        "hint: is volantd running? (systemctl status volantd) Set --api or VOLANT_API_BASE",
    ]
