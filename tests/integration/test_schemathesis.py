"""Schemathesis against a real volantd: generated requests from the OpenAPI document, every
answer checked against it (status codes, content types, schemas) and never a 5xx.

The daemon runs in a private network namespace, so even a generated plugin URL can only
reach addresses inside it; guests start paused, so a generated create that succeeds is cheap.
Streams (events, logs, console) and the MCP endpoint are left out: a generated GET would hold
them open until the timeout, and they have tests of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import BIN, Daemon, build_guest, netns, start_daemon, stop_daemon

pytestmark = pytest.mark.integration

KEY = "schemathesis-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")
STREAMS = r"^/(ws/v1/.*|api/v1/mcp|api/v1/events/vms|api/v1/vms/\{name\}/logs)$"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    build_guest()
    with netns() as ns:
        # Paused guests never answer the power button: a short stop_timeout keeps each stop
        # (and restart) the stateful phase reaches well under the 10 s response time check.
        settings = {"runtime.start_paused": True, "runtime.stop_timeout": 1, "api.key": KEY}
        d = start_daemon(ns, tmp_path_factory.mktemp("volantd"), settings)
        try:
            yield d
        finally:
            stop_daemon(d)


def test_generated_requests_get_documented_answers(daemon: Daemon, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = daemon.in_ns(
        str(BIN / "st"),
        "--config-file",
        str(CONFIG),
        "run",
        "http://127.0.0.1:7777/api/v1/openapi.json",
        "--header",
        f"X-Volant-API-Key: {KEY}",
        "--checks",
        "all",
        # The literal /api/v1/plugins/schema sits beside /api/v1/plugins/{plugin}, so aiohttp's
        # Allow for it also names the template's DELETE (which answers 404 for "schema").
        "--exclude-checks",
        "allow_header_conformance",
        "--exclude-path-regex",
        STREAMS,
        "--max-examples",
        "40",
        "--seed",
        "7",
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "unhandled error" not in daemon.log_text()
    assert "broke the OpenAPI document" not in daemon.log_text()
    cases = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(cases) > 20  # the run did test something
    # The create body's newer fields were generated too, good values and bad.
    isolated = [body["isolated"] for body in create_bodies(cases) if "isolated" in body]
    assert any(value is True or value is False for value in isolated), isolated
    assert any(not isinstance(value, bool) for value in isolated), isolated


def create_bodies(report: Any) -> list[dict[str, Any]]:
    """Every JSON object body of a generated POST /api/v1/vms in the ndjson report."""
    found: list[dict[str, Any]] = []
    if isinstance(report, dict):
        request = (report.get("method"), report.get("path"))
        if request == ("POST", "/api/v1/vms") and isinstance(report.get("body"), dict):
            found.append(report["body"])
        for value in report.values():
            found += create_bodies(value)
    elif isinstance(report, list):
        for value in report:
            found += create_bodies(value)
    return found
