"""The OpenAPI 3.1 document of /v1, generated from the declared operations
(app.web.operations) and shapes (app.web.schemas): nothing in it is written twice."""
from __future__ import annotations

import re
from typing import Iterable

from flask import Blueprint
from pydantic.json_schema import models_json_schema

from app.web.inputs import MAX_ID, MAX_JSON_BYTES, MAX_TEXT, NAME_PATTERN
from app.web.operations import Operation, Reply, operations
from app.web.fields import integer_schema
from app.web.schemas import Error

ERROR_DESCRIPTIONS = {
    "400": "Malformed request (bad JSON, wrong, missing or out-of-range fields, unreadable audio).",
    "401": "Missing or invalid API key.",
    "403": "The API key lacks the required scope.",
    "404": f"Unknown id or name (any id above {MAX_ID} included).",
    "409": "Conflicts with the current state (registry gate failed, not evaluated, in use, retired; "
           "external_id taken; speaker not enrolled).",
    "413": f"Upload larger than the configured limit, or a JSON body over {MAX_JSON_BYTES} bytes.",
    "422": "Audio too long, or too little speech after voice activity detection.",
    "500": "Unexpected server error; detail.request_id names it in the server log.",
    "503": "Temporarily unable to serve: out of memory for this request (insufficient_memory) or no "
           "runtime path in force (no_active_alignment). Retry later.",
}
#: any request can meet these
ALWAYS = ("500", "503")
#: path variables by URL converter (app.web.inputs)
CONVERTER_SCHEMAS = {
    "id": integer_schema(1, MAX_ID),
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": f"^{NAME_PATTERN}$"},
    None: {"type": "string"},
}
_PATH_VARIABLE = re.compile(r"<(?:(\w+):)?(\w+)>")
REF = "#/components/schemas/{model}"


def openapi_document(blueprints: Iterable[Blueprint]) -> dict:
    declared = [op for blueprint in blueprints for op in operations(blueprint)]
    paths: dict[str, dict] = {}
    for op in declared:
        paths.setdefault(_PATH_VARIABLE.sub(r"{\2}", op.rule), {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "NESSA speaker enrollment and verification", "version": "1.0.0",
                 "description": "Enroll speakers with a heavy model; identify and verify them at run time "
                                "with a light model aligned into the enrollment space."},
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "API key; scopes: enroll, identify, admin"}},
            "schemas": _components(declared),
        },
        "paths": paths,
    }


def _components(declared: list[Operation]) -> dict:
    inputs = {shape for op in declared for shape in (op.body, op.form) if shape is not None}
    outputs = {reply.shape for op in declared for reply in op.replies if reply.shape is not None} | {Error}
    _, schemas = models_json_schema([*((s, "validation") for s in sorted(inputs, key=_name)),
                                     *((s, "serialization") for s in sorted(outputs, key=_name))],
                                    ref_template=REF)
    return schemas.get("$defs", {})


def _name(shape: type) -> str:
    return shape.__name__


def _ref(shape: type) -> dict:
    return {"$ref": REF.format(model=shape.__name__)}


def _operation(op: Operation) -> dict:
    entry = {"summary": op.summary, "operationId": op.endpoint,
             "security": [{"bearerAuth": []}] if op.secured else []}
    parameters = _path_parameters(op) + _query_parameters(op)
    if parameters:
        entry["parameters"] = parameters
    if op.body is not None:
        entry["requestBody"] = {"required": not op.body.optional,
                                "content": {"application/json": {"schema": _ref(op.body)}}}
    if op.form is not None:
        entry["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": _ref(op.form)}}}
    entry["responses"] = {**{str(reply.status): _reply(reply) for reply in op.replies}, **_errors(op)}
    return entry


def _path_parameters(op: Operation) -> list[dict]:
    overrides = op.path_schemas or {}
    return [{"name": name, "in": "path", "required": True,
             "schema": overrides.get(name, CONVERTER_SCHEMAS[converter or None])}
            for converter, name in _PATH_VARIABLE.findall(op.rule)]


def _query_parameters(op: Operation) -> list[dict]:
    if op.query is None:
        return []
    properties = op.query.model_json_schema()["properties"]
    return [{"name": name, "in": "query", "required": False, "schema": _bare(properties[name])}
            for name in op.query.model_fields]


def _bare(schema: dict) -> dict:
    return {key: value for key, value in schema.items() if key != "title"}


def _reply(reply: Reply) -> dict:
    content = {"application/json": {"schema": _ref(reply.shape)}} if reply.shape is not None else {}
    content.update({media: {"schema": {"type": "string"}} for media in reply.media})
    return {"description": reply.description, **({"content": content} if content else {})}


def _errors(op: Operation) -> dict:
    implied = [*(("401", "403") if op.secured else ()), *(("400",) if op.body or op.form or op.query else ()),
               *(("413",) if op.body or op.form else ())]
    statuses = sorted({*implied, *op.errors, *ALWAYS})
    return {status: {"description": ERROR_DESCRIPTIONS[status],
                     "content": {"application/json": {"schema": _ref(Error)}}} for status in statuses}
