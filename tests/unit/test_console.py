"""The console's pieces that need no guest: the log's tail, escape keys, the documented route
and close codes (tests/integration/test_console.py drives the real thing)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast

import click
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from volant.api.rest import make_app
from volant.api.rest.check import mismatch
from volant.api.rest.common import API
from volant.api.rest.console import CLOSE, GOING_AWAY
from volant.cli.terminal import parse_escape, show_escape
from volant.client.console import CLOSE_REASONS, TAKEN_OVER, VM_STOPPED
from volant.engine import ConsoleEnd, Engine
from volant.runtime.console import tail

pytestmark = pytest.mark.unit


def last_lines(data: bytes, lines: int) -> bytes:
    """What `tail -n lines` prints (a last line without its newline counts)."""
    parts = data.split(b"\n")
    whole = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        whole.append(parts[-1])
    return b"".join(whole[-lines:])


@given(
    data=st.binary(max_size=3000).map(lambda b: b.replace(b"\x00", b"\n")),
    lines=st.integers(1, 50),
    max_bytes=st.integers(1, 4000),
)
def test_tail_is_the_last_lines_of_the_last_bytes(data: bytes, lines: int, max_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.log"
        path.write_bytes(data)
        assert tail(path, lines, max_bytes) == last_lines(data[-max_bytes:], lines)


def test_tail_of_a_big_log_reads_only_its_end(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    body = b"".join(b"line %d\r\n" % n for n in range(200_000))
    path.write_bytes(body + b"no newline yet")
    assert tail(path, 3, 1024 * 1024) == b"line 199998\r\nline 199999\r\nno newline yet"
    assert tail(path, 10_000, 100) == body[-86:] + b"no newline yet"
    assert tail(tmp_path / "missing.log", 5, 100) == b""


@pytest.mark.parametrize(
    ("text", "byte", "shown"),
    [("^]", 0x1D, "^]"), ("^a", 0x01, "^A"), ("^?", 0x7F, "^?"), ("~", 0x7E, "~")],
)
def test_escape_keys(text: str, byte: int, shown: str) -> None:
    assert parse_escape(text) == byte
    assert show_escape(byte) == shown


@pytest.mark.parametrize("text", ["", "^1", "ab", "é"])
def test_bad_escape_keys(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_escape(text)


def test_client_and_server_agree_on_close_codes() -> None:
    assert CLOSE[ConsoleEnd.VM_STOPPED][0] == VM_STOPPED
    assert CLOSE[ConsoleEnd.TAKEN_OVER][0] == TAKEN_OVER
    assert {code for code, _reason in [*CLOSE.values(), GOING_AWAY]} == set(CLOSE_REASONS)


def test_the_document_lists_the_console_routes() -> None:
    app = make_app(cast(Engine, object()))
    api = app[API]
    document = api.openapi(version="test")
    console = document["paths"]["/ws/v1/vms/{name}/console"]["get"]
    assert {"101", "400", "404", "409", "503"} <= set(console["responses"])
    assert [p["name"] for p in console["parameters"]] == ["name", "force"]
    log = document["paths"]["/api/v1/vms/{name}/console/log"]["get"]
    assert set(log["responses"]["200"]["content"]) == {"text/plain"}
    # An upgraded answer has no HTTP body for the check to find wrong.
    op = next(op for op in api.operations if op.operation_id == "vm_console")
    assert mismatch(document, op, web.WebSocketResponse()) == ""
