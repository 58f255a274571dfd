"""/v1/openapi.json is generated from the declared shapes: every success has a described
body, the bounds it states are the ones the server enforces, and /v1/docs serves the
interactive page from the installed package."""
from __future__ import annotations

import re

import pytest

from app.web.factory import BLUEPRINTS
from app.web.openapi import openapi_document

DOCUMENT = openapi_document(BLUEPRINTS)
OPERATIONS = [(path, method, op) for path, item in DOCUMENT["paths"].items() for method, op in item.items()]


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _walk_refs(schema, seen: set) -> None:
    """Every $ref anywhere below `schema` names a component."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            assert name in DOCUMENT["components"]["schemas"], schema["$ref"]
            if name not in seen:
                seen.add(name)
                _walk_refs(DOCUMENT["components"]["schemas"][name], seen)
        for value in schema.values():
            _walk_refs(value, seen)
    elif isinstance(schema, list):
        for value in schema:
            _walk_refs(value, seen)


@pytest.mark.models_only
@pytest.mark.parametrize("path,method,op", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m, _ in OPERATIONS])
def test_every_success_has_a_schema_with_its_properties(path, method, op):
    successes = {status: reply for status, reply in op["responses"].items() if status.startswith("2")}
    assert successes, f"{method} {path} declares no success"
    for status, reply in successes.items():
        if status == "204":
            assert "content" not in reply
            continue
        assert reply.get("content"), f"{method} {path} {status} has no content"
        if "application/json" in reply["content"]:
            schema = _resolve(reply["content"]["application/json"]["schema"])
            assert schema["type"] == "object" and schema["properties"], f"{method} {path} {status}"
            for name, prop in schema["properties"].items():
                assert prop, f"{method} {path} {status}: property {name} undescribed"
        else:
            assert all(media.get("schema") for media in reply["content"].values())
    for status, reply in op["responses"].items():
        if not status.startswith("2"):
            assert _resolve(reply["content"]["application/json"]["schema"])["required"] == ["code", "message",
                                                                                              "detail"]


@pytest.mark.models_only
def test_request_shapes_refuse_undeclared_fields_and_every_reference_resolves():
    bodies = [op["requestBody"] for _, _, op in OPERATIONS if "requestBody" in op]
    assert len(bodies) >= 10
    for body in bodies:
        (media, content), = body["content"].items()
        assert media in ("application/json", "multipart/form-data")
        schema = _resolve(content["schema"])
        assert schema["additionalProperties"] is False and schema["properties"]
    _walk_refs(DOCUMENT, set())


@pytest.mark.models_only
def test_path_variables_are_documented_parameters():
    for path, method, op in OPERATIONS:
        variables = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert variables == declared, f"{method} {path}"


def test_the_served_document_is_the_generated_one(harness):
    import json

    assert harness.client.get("/v1/openapi.json").get_json() == json.loads(json.dumps(DOCUMENT))


def test_query_bounds_in_the_document_are_the_enforced_ones(harness):
    """The server refuses exactly past the bounds the document states."""
    for path, key_scope in (("/v1/speakers", "enroll"), ("/v1/models/history", "admin")):
        for parameter in DOCUMENT["paths"][path]["get"]["parameters"]:
            name, schema = parameter["name"], parameter["schema"]
            for value, ok in ((schema["maximum"], True), (schema["maximum"] + 1, False),
                              (schema["minimum"], True), (schema["minimum"] - 1, False)):
                response = harness.client.get(f"{path}?{name}={value}", headers=harness.headers(key_scope))
                assert (response.status_code == 200) == ok, (path, name, value, response.get_json())
                if not ok:
                    assert response.get_json()["code"] == "invalid_field"
                    assert response.get_json()["detail"]["field"] == name


def test_body_fields_in_the_document_are_the_accepted_ones(harness):
    declared = set(_resolve(DOCUMENT["paths"]["/v1/speakers"]["post"]["requestBody"]["content"]["application/json"]
                            ["schema"])["properties"])
    assert declared == {"name", "external_id"}
    refused = harness.client.post("/v1/speakers", json={"name": "Ada", "nickname": "x"},
                                  headers=harness.headers("enroll"))
    assert refused.status_code == 400
    assert refused.get_json()["code"] == "invalid_fields"
    assert refused.get_json()["detail"]["unknown"] == ["nickname"]
    assert set(refused.get_json()["detail"]["allowed"]) == declared


def test_the_interactive_page_is_served_from_the_package(harness):
    page = harness.client.get("/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/v1/openapi.json" in html
    assets = re.findall(r'(?:src|href)="(/v1/docs/[^"]+)"', html)
    assert len(assets) == 4
    for asset in assets:
        response = harness.client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 500, asset
    bundle = harness.client.get("/v1/docs/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle
    missing = harness.client.get("/v1/docs/index.html")
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"
    escape = harness.client.get("/v1/docs/..%2Fpackage.json")
    assert escape.status_code == 404
