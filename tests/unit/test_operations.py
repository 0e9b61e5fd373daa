"""Operations from a workload's OpenAPI document (volant.model.operations), how a call's target
is built, and how the passthrough routes take their paths apart."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import cast

import pytest
from aiohttp.test_utils import make_mocked_request

from volant.api.rest import make_app
from volant.api.rest.passthrough import forwarded, workload_target
from volant.engine import Engine
from volant.engine.passthrough import load_document
from volant.model import InvalidArgument, NotFound, Unavailable
from volant.model.operations import find_operation, parse_operations

pytestmark = pytest.mark.unit

HELLO = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "hello" / "app.py"

PETS_YAML = b"""
openapi: 3.0.3
info: {title: pets, version: "1"}
paths:
  /pets:
    summary: not an operation
    parameters: []
    get:
      operationId: listPets
      summary: All the pets
    post:
      operationId: addPet
      description: |
        Adds a pet.
        More words.
  /pets/{id}/toys/{toy}:
    delete:
      operationId: dropToy
  not-a-path:
    get: {operationId: ignored}
"""


def test_the_example_plugins_document_has_no_operation_ids_so_method_and_path_name_them() -> None:
    document = runpy.run_path(str(HELLO))["OPENAPI"]
    ops = parse_operations(document)
    assert [(op.key, op.method, op.path, op.summary, op.operation_id) for op in ops] == [
        ("GET:/greet", "GET", "/greet", "A greeting and the workload's pid", None),
        ("POST:/echo", "POST", "/echo", "The request body, echoed", None),
        ("GET:/health", "GET", "/health", "200 while healthy", None),
    ]
    assert find_operation(ops, "get:/greet") is ops[0]


def test_openapi_3_yaml_methods_ids_summaries_and_path_parameters() -> None:
    ops = parse_operations(load_document("application/yaml", PETS_YAML))
    assert [op.to_dict() for op in ops] == [
        {"key": "listPets", "operation_id": "listPets", "method": "GET", "path": "/pets",
         "summary": "All the pets", "path_params": []},
        {"key": "addPet", "operation_id": "addPet", "method": "POST", "path": "/pets",
         "summary": "Adds a pet.", "path_params": []},
        {"key": "dropToy", "operation_id": "dropToy", "method": "DELETE",
         "path": "/pets/{id}/toys/{toy}", "summary": "", "path_params": ["id", "toy"]},
    ]  # fmt: skip
    # Any operation answers to METHOD:/path as well as to its operationId.
    assert find_operation(ops, "DELETE:/pets/{id}/toys/{toy}") is ops[2]
    with pytest.raises(NotFound, match="listPets, addPet, dropToy") as err:
        find_operation(ops, "feedPet")
    assert err.value.field == "operation"


def test_a_calls_target_fills_path_parameters_encoded_and_keeps_the_query() -> None:
    drop = parse_operations(load_document("", PETS_YAML))[2]
    target = drop.target({"id": "3", "toy": "a b/c"}, [("force", "yes"), ("n", "1&2")])
    assert target == "/pets/3/toys/a%20b%2Fc?force=yes&n=1%262"
    with pytest.raises(InvalidArgument, match=r"needs path parameter.* toy") as missing:
        drop.target({"id": "3"})
    assert missing.value.field == "params"
    with pytest.raises(InvalidArgument, match=r"has no path parameter.* colour"):
        drop.target({"id": "3", "toy": "x", "colour": "red"})


@pytest.mark.parametrize(
    ("document", "why"),
    [(b"[1, 2]", "no `paths`"), (b'{"openapi": "3.1.0"}', "no `paths`"), (b"a: [b", "neither")],
)
def test_a_document_without_paths_or_not_json_or_yaml_is_refused(document: bytes, why: str) -> None:
    with pytest.raises(Unavailable, match=why):
        parse_operations(load_document("application/json", document))


async def test_passthrough_routes_take_the_rest_of_the_path_and_drop_volantds_key() -> None:
    app = make_app(cast(Engine, object()))
    cases = [
        ("GET", "/api/v1/vms/web/proxy/a%2Fb/c?x=1&api_key=s3cret&y=%20", "vm_proxy_get"),
        ("POST", "/api/v1/vms/web/proxy/", "vm_proxy_post"),
        ("POST", "/api/v1/vms/web/operations/GET:%2Fgreet", "vm_call_operation"),
    ]
    seen = []
    for method, path, route in cases:
        match = await app.router.resolve(make_mocked_request(method, path, app=app))
        assert match.route.name == route
        request = make_mocked_request(method, path, app=app, match_info=dict(match))
        seen.append(workload_target(request) if "proxy" in path else match["operation"])
    assert seen == ["/a%2Fb/c?x=1&y=%20", "/", "GET:/greet"]
    headers = {"X-Volant-API-Key": "k", "Connection": "close, X-Hop", "X-Hop": "1", "Accept": "*/*"}
    assert forwarded(headers | {"Host": "h"}) == (("Accept", "*/*"),)
    upgrade = {"Sec-WebSocket-Key": "k", "Sec-WebSocket-Protocol": "p", "Origin": "o"}
    assert forwarded(upgrade, websocket=True) == (("Origin", "o"),)
