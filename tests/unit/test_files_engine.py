"""The engine's side of files before any guest: the path check, the query sent to the agent, and
the agent's refusals turned into VolantErrors with the right code, field and hint."""

from __future__ import annotations

import json

import pytest

from volant.engine.files import MAX_PATH, FileIn, check_path, guest_error
from volant.model import (
    InsufficientStorage,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unavailable,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("path", ["relative", "", "/a\0b", "/" + "a" * MAX_PATH])
def test_a_path_is_absolute_and_short(path: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_path(path)
    assert caught.value.field == "path"


def test_dotdot_is_left_to_the_chroot() -> None:
    assert check_path("/../etc/passwd") == "/../etc/passwd"


def test_the_query_says_only_what_was_given() -> None:
    assert FileIn("/a b").query() == "path=%2Fa+b"
    query = FileIn("/x", user="root", mode=0o750, mtime=1.5).query()
    assert query == "path=%2Fx&user=root&mode=750&mtime=1.5"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidArgument),
        (403, PermissionDenied),
        (404, NotFound),
        (409, InvalidState),
        (413, TooLarge),
        (507, InsufficientStorage),
        (500, Unavailable),
        (401, Unavailable),
    ],
)
def test_the_agents_refusals_keep_their_meaning(status: int, kind: type[Exception]) -> None:
    error = guest_error(status, json.dumps({"error": "/x: nope"}).encode(), "web")
    assert type(error) is kind
    assert str(error) == "VM 'web': /x: nope"


def test_hints_say_what_to_do() -> None:
    assert "--user root" in guest_error(403, b'{"error": "denied"}', "web").hint
    assert "vm.files_max_mb" in guest_error(413, b'{"error": "big"}', "web").hint
    assert guest_error(502, b"not json", "web").message == "VM 'web': not json"
