"""Exec's pieces that need no guest: the host's agent link against the real agent (on a unix
socket, commands run on this host), the spec checks, volar's option parsing and the routes in
the OpenAPI document (tests/integration/test_exec.py drives a real guest)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import click
import pytest
from volant_agent.app import Agent, make_handler
from volant_agent.http import MAX_HEAD, connection_handler
from volant_agent.logs import LogBuffer
from volant_agent.manifest import Workload
from volant_agent.workload import Supervisor

from volant.api.rest import make_app
from volant.api.rest.common import API
from volant.cli.exec import parse_env
from volant.engine import Engine
from volant.engine.exec import brief, check_spec
from volant.model import AgentEndpoint, InvalidArgument, InvalidState
from volant.model.execs import ExecSpec
from volant.runtime.execlink import ExecLink, open_exec

pytestmark = pytest.mark.unit

SECRET = "link-test-secret"


@contextlib.asynccontextmanager
async def agent_on(path: Path, *, prepared: bool = True) -> AsyncIterator[AgentEndpoint]:
    """The real agent's routes on a unix socket, as a network-less VM's relay serves them."""
    sup = Supervisor(Workload(entrypoint=("/bin/true",), env={"FROM_WORKLOAD": "w"}), LogBuffer())
    agent = Agent(None, "test", LogBuffer(), sup, lambda: None, secret=SECRET)
    agent.workload_prepared = prepared
    server = await asyncio.start_unix_server(
        connection_handler(make_handler(agent)), str(path), limit=MAX_HEAD
    )
    try:
        yield AgentEndpoint("", SECRET, socket=path)
    finally:
        server.close()
        await server.wait_closed()


def test_the_link_streams_output_input_and_the_end(tmp_path: Path) -> None:
    async def go() -> None:
        async with agent_on(tmp_path / "agent.sock") as agent:
            spec = ExecSpec(("sh", "-c", "cat; echo $FROM_WORKLOAD $X >&2; exit 4"), {"X": "x"})
            link = await open_exec(agent, spec.to_agent())
            await link.send_stdin(b"in\n")
            await link.close_stdin()
            got = [chunk async for chunk in _chunks(link)]
            await link.close()
            assert ("stdout", b"in\n") in got
            assert ("stderr", b"w x\n") in got
            assert link.end is not None
            assert link.end.exit_code == 4

    asyncio.run(go())


async def _chunks(link: ExecLink) -> AsyncIterator[tuple[str, bytes]]:
    while (chunk := await link.receive()) is not None:
        yield chunk


def test_the_agents_refusals_become_volant_errors(tmp_path: Path) -> None:
    async def go() -> None:
        async with agent_on(tmp_path / "a.sock") as agent:
            with pytest.raises(InvalidArgument) as bad_user:
                await open_exec(agent, ExecSpec(("id",), user="nobody-here").to_agent())
            assert bad_user.value.field == "user"
            with pytest.raises(InvalidArgument) as bad_dir:
                await open_exec(agent, ExecSpec(("id",), workdir="/no/such/dir").to_agent())
            assert bad_dir.value.field == "workdir"
            wrong = AgentEndpoint("", "wrong-secret", socket=agent.socket)
            with pytest.raises(Exception, match="401"):
                await open_exec(wrong, ExecSpec(("id",)).to_agent())
        async with agent_on(tmp_path / "b.sock", prepared=False) as agent:
            with pytest.raises(InvalidState, match="not ready"):
                await open_exec(agent, ExecSpec(("id",)).to_agent())

    asyncio.run(go())


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ExecSpec(()), "argv"),
        (ExecSpec(("",)), "argv"),
        (ExecSpec(("a\0b",)), "argv"),
        (ExecSpec(("id",), env={"A=B": "x"}), "env"),
        (ExecSpec(("id",), workdir="tmp"), "workdir"),
        (ExecSpec(("id",), timeout=-1), "timeout"),
        (ExecSpec(("id",), rows=0), "rows"),
    ],
)
def test_bad_specs_name_their_field(spec: ExecSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_spec(spec)
    assert caught.value.field == field


def test_the_event_keeps_argv_brief() -> None:
    assert brief(("sh", "-c", "x" * 300)) == ["sh", "-c", "x" * 256 + "…"]
    long = brief(tuple(str(n) for n in range(100)))
    assert long[-1] == "… 36 more"
    assert len(long) == 65


def test_env_options() -> None:
    assert parse_env(("A=1", "B=x=y", "C=")) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(click.BadParameter):
        parse_env(("NOVALUE",))


def test_the_document_lists_the_exec_routes() -> None:
    app = make_app(cast(Engine, object()))
    document = app[API].openapi(version="test")
    post = document["paths"]["/api/v1/vms/{name}/exec"]["post"]
    media = set(post["responses"]["200"]["content"])
    assert media == {"application/json", "application/x-ndjson"}
    assert {"400", "404", "409", "503"} <= set(post["responses"])
    socket = document["paths"]["/ws/v1/vms/{name}/exec"]["get"]
    assert "101" in socket["responses"]
