"""The OpenAPI 3.1 description of /v1, served at /v1/openapi.json. Limits come from
app.web.inputs, the module that enforces them."""
from __future__ import annotations

from app.web.inputs import MAX_CANDIDATES, MAX_ID, MAX_JSON_BYTES, MAX_TEXT, NAME_PATTERN, TEXT_PATTERN
from app.store.models import ENROLLMENT_STATUSES, JOB_STATUSES


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("Malformed request (bad JSON, wrong, missing or out-of-range fields, unreadable audio)."),
    "401": _error("Missing or invalid API key."),
    "403": _error("The API key lacks the required scope."),
    "404": _error(f"Unknown id or name (any id above {MAX_ID} included)."),
    "409": _error("Conflicts with the current state (registry gate failed, not evaluated, in use, retired; "
                  "external_id taken; speaker not enrolled)."),
    "413": _error(f"Upload larger than the configured limit, or a JSON body over {MAX_JSON_BYTES} bytes."),
    "422": _error("Audio too long, or too little speech after voice activity detection."),
    "500": _error("Unexpected server error; detail.request_id names it in the server log."),
    "503": _error("Temporarily unable to serve: out of memory for this request (insufficient_memory) or no "
                  "runtime path in force (no_active_alignment). Retry later."),
}
#: any request can meet these
ALWAYS = ("500", "503")


def _responses(ok: dict, *codes: str) -> dict:
    return {**ok, **{c: ERRORS[c] for c in (*codes, *ALWAYS)}}


def _integer(minimum: int, maximum: int) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


ROW_ID = _integer(1, MAX_ID)
#: a name or external id: printable (no control characters), not blank
TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}


def _path_id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": ROW_ID}


def _audio_form(extra: dict | None = None, required=("audio",)) -> dict:
    properties = {"audio": {"type": "string", "format": "binary",
                            "description": "WAV, FLAC, OGG (MP3 where libsndfile reads it); any rate and channels."}}
    properties.update(extra or {})
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": list(required),
                   "additionalProperties": False}}}}


def _candidates(description: str) -> dict:
    return {"type": "array", "items": ROW_ID, "minItems": 1, "maxItems": MAX_CANDIDATES,
            "description": description}


def _json(ref: str, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _json_object(description: str, properties: dict | None = None) -> dict:
    schema = {"type": "object", "properties": properties} if properties else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


JOB_ACCEPTED = "#/components/schemas/JobAccepted"
REGISTRY = "#/components/schemas/Registry"
DEPLOYMENT = "#/components/schemas/Deployment"


def _json_body(properties: dict, required_fields: list, *, body_required: bool = True) -> dict:
    return {"required": body_required, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required_fields, "additionalProperties": False}}}}


def openapi_document() -> dict:
    secured = [{"bearerAuth": []}]
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": f"^{NAME_PATTERN}$"}}
    speaker_id = _path_id("speaker_id")
    return {
        "openapi": "3.1.0",
        "info": {"title": "NESSA speaker enrollment and verification", "version": "1.0.0",
                 "description": "Enroll speakers with a heavy model; identify and verify them at run time "
                                "with a light model aligned into the enrollment space."},
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "API key; scopes: enroll, identify, admin"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message", "detail"],
                          "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                         "detail": {"type": "object"}}},
                "SpeakerRef": {"type": ["object", "null"],
                               "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}},
                "Speaker": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "external_id": {"type": ["string", "null"]}, "enrolled": {"type": "boolean"},
                    "enrollments": {"type": "array", "items": {"$ref": "#/components/schemas/Enrollment"}},
                    "profiles": {"type": "array", "items": {"type": "object"}}}},
                "Enrollment": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "status": {"type": "string", "enum": list(ENROLLMENT_STATUSES)},
                    "duration_s": {"type": "number"}, "speech_s": {"type": ["number", "null"]},
                    "audio_sha256": {"type": "string"}, "audio_retained": {"type": "boolean"}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "kind": {"type": "string"},
                    "status": {"type": "string", "enum": list(JOB_STATUSES)},
                    "attempts": {"type": "integer"}, "progress": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]}, "result": {"type": ["object", "null"]}}},
                "Models": {"type": "object", "properties": {
                    "runtime_model": {"type": "string"}, "enrollment_space": {"type": "string"},
                    "alignment": {"type": "string"}}},
                "Identification": {"type": "object", "properties": {
                    "speaker": {"$ref": "#/components/schemas/SpeakerRef"},
                    "score": {"type": ["number", "null"], "description": "calibrated log-likelihood ratio"},
                    "threshold": {"type": "number"},
                    "scoring": {"type": ["string", "null"], "enum": ["fused", "alignment", None]},
                    "candidates": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "integer"}, "name": {"type": "string"}, "score": {"type": "number"},
                        "scoring": {"type": "string"}}}},
                    "models": {"$ref": "#/components/schemas/Models"}}},
                "ApiKey": {"type": "object", "description": "A key as listed; the key itself is shown only "
                           "when created (field `key`), its hash never", "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"}, "prefix": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string", "enum": ["enroll", "identify", "admin"]}},
                    "state": {"type": "string", "enum": ["active", "revoked", "expired"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "last_used_at": {"type": ["string", "null"], "format": "date-time",
                                     "description": "written at most once a minute"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    "revoked_at": {"type": ["string", "null"], "format": "date-time"}}},
                "Verification": {"type": "object", "properties": {
                    "accepted": {"type": "boolean"}, "score": {"type": "number"}, "threshold": {"type": "number"},
                    "scoring": {"type": "string"}, "models": {"$ref": "#/components/schemas/Models"}}},
                "JobAccepted": {"type": "object", "required": ["job"], "properties": {
                    "job": {"$ref": "#/components/schemas/Job"}}},
                "Deployment": {"type": "object", "description": "A runtime path put in force", "properties": {
                    "id": {"type": "integer"}, "enrollment_space": {"type": "string"},
                    "runtime_model": {"type": "string"}, "alignment": {"type": "string"},
                    "action": {"type": "string"}, "actor": {"type": "string"}, "gate": {"type": ["object", "null"]},
                    "created_at": {"type": "string", "format": "date-time"}}},
                "Registry": {"type": "object", "properties": {
                    "active": {"oneOf": [{"$ref": "#/components/schemas/Deployment"}, {"type": "null"}]},
                    "models": {"type": "array", "items": {"type": "object"}},
                    "alignments": {"type": "array", "items": {"type": "object"}}}},
            },
        },
        "paths": {
            "/v1/health": {"get": {"summary": "Liveness and index sizes (no key needed)", "security": [],
                                   "responses": _responses({"200": _json_object("OK")})}},
            "/v1/openapi.json": {"get": {"summary": "This document (no key needed)", "security": [],
                                         "responses": _responses({"200": _json_object("OpenAPI 3.1")})}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no key needed)", "security": [],
                                 "responses": _responses({"200": {"description": "Prometheus text exposition",
                                                                  "content": {"text/plain": {"schema": {
                                                                      "type": "string"}}}}})}},
            "/v1/speakers": {
                "post": {"summary": "Create a speaker", "security": secured,
                         "requestBody": _json_body({"name": TEXT, "external_id": {**TEXT, "type": ["string", "null"]}},
                                                   ["name"]),
                         "responses": _responses({"201": _json("#/components/schemas/Speaker", "Created")},
                                                 "400", "401", "403", "409", "413")},
                "get": {"summary": "List speakers", "security": secured,
                        "parameters": [_query("limit", _integer(1, 1000)), _query("offset", _integer(0, MAX_ID))],
                        "responses": _responses({"200": _json_object("{speakers, total, limit, offset}", {
                            "speakers": {"type": "array", "items": {"$ref": "#/components/schemas/Speaker"}},
                            "total": {"type": "integer"}, "limit": {"type": "integer"},
                            "offset": {"type": "integer"}})}, "400", "401", "403")}},
            "/v1/speakers/{speaker_id}": {
                "parameters": [speaker_id],
                "get": {"summary": "Get a speaker", "security": secured,
                        "responses": _responses({"200": _json("#/components/schemas/Speaker")}, "401", "403", "404")},
                "delete": {"summary": "Delete a speaker, its embeddings, stored audio and index entries",
                           "security": secured,
                           "responses": _responses({"204": {"description": "Deleted"}}, "401", "403", "404")}},
            "/v1/speakers/{speaker_id}/enrollments": {
                "parameters": [speaker_id],
                "post": {"summary": "Add enrollment audio (embedded by a background job)", "security": secured,
                         "requestBody": _audio_form(),
                         "responses": _responses({"202": _json_object("Accepted; poll the job", {
                             "job": {"$ref": "#/components/schemas/Job"},
                             "enrollment": {"$ref": "#/components/schemas/Enrollment"}})},
                             "400", "401", "403", "404", "413", "422")}},
            "/v1/jobs/{job_id}": {
                "parameters": [_path_id("job_id")],
                "get": {"summary": "Job status; only for the key that created the job and admin keys "
                                   "(any other key gets 404)", "security": secured,
                        "responses": _responses({"200": _json("#/components/schemas/Job")}, "401", "403", "404")}},
            "/v1/identify": {
                "post": {"summary": "Who is speaking? (open set: speaker null when unknown)", "security": secured,
                         "requestBody": _audio_form({"top_k": _integer(1, 100),
                                                     "candidates": _candidates("restrict to these speaker ids")}),
                         "responses": _responses({"200": _json("#/components/schemas/Identification")},
                                                 "400", "401", "403", "404", "413", "422")}},
            "/v1/verify": {
                "post": {"summary": "Is this the claimed speaker?", "security": secured,
                         "requestBody": _audio_form({"speaker_id": ROW_ID}, ("audio", "speaker_id")),
                         "responses": _responses({"200": _json("#/components/schemas/Verification")},
                                                 "400", "401", "403", "404", "409", "413", "422")}},
            "/v1/diarize": {
                "post": {"summary": "Who spoke when, with speakers named against the gallery (unknown-N otherwise)",
                         "security": secured,
                         "parameters": [_query("format", {"type": "string", "enum": ["json", "rttm"]})],
                         "requestBody": _audio_form({
                             "candidates": _candidates("name speakers only among these ids"),
                             "num_speakers": _integer(1, 100), "min_speakers": _integer(1, 100),
                             "max_speakers": _integer(1, 100)}),
                         "responses": _responses({
                             "200": {"description": "segments [{start, end, label, speaker, score}] and speakers "
                                                    "(JSON), or RTTM with format=rttm",
                                     "content": {"application/json": {"schema": {"type": "object"}},
                                                 "text/plain": {"schema": {"type": "string"}}}},
                             "202": _json(JOB_ACCEPTED, "long recording: a job; the same result at /v1/jobs/{id}")},
                             "400", "401", "403", "404", "413", "422")}},
            "/v1/keys": {
                "post": {"summary": "Create an API key (admin)", "security": secured,
                         "requestBody": _json_body({
                             "name": TEXT,
                             "scopes": {"type": "array", "minItems": 1,
                                        "items": {"type": "string", "enum": ["enroll", "identify", "admin"]}},
                             "expires_in_days": _integer(1, 3650),
                             "expires_at": {"type": "string", "format": "date-time",
                                            "description": "with a time zone; not with expires_in_days"}},
                             ["scopes"]),
                         "responses": _responses({"201": _json("#/components/schemas/ApiKey",
                                                               "Created; the key is shown once, in `key`")},
                                                 "400", "401", "403", "413")},
                "get": {"summary": "Every API key with its state, last use and expiry (admin)", "security": secured,
                        "responses": _responses({"200": _json_object("OK", {"keys": {
                            "type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}})}, "401", "403")}},
            "/v1/keys/{key_id}": {
                "parameters": [_path_id("key_id")],
                "delete": {"summary": "Revoke an API key (admin); revoking again is fine. The last active admin "
                                      "key cannot be revoked here (409 last_admin_key; the CLI can)",
                           "security": secured,
                           "responses": _responses({"204": {"description": "Revoked"}}, "401", "403", "404", "409")}},
            "/v1/alignments": {
                "get": {"summary": "Registered alignment artifacts", "security": secured,
                        "responses": _responses({"200": _json_object("OK", {"alignments": {
                            "type": "array", "items": {"type": "object"}}})}, "401", "403")},
                "post": {"summary": "Register an alignment artifact directory (admin)", "security": secured,
                         "requestBody": _json_body({"path": TEXT}, ["path"]),
                         "responses": _responses({"201": _json_object("Registered", {
                             "name": {"type": "string"}, "state": {"type": "string"}})},
                             "400", "401", "403", "404", "409", "413")}},
            "/v1/alignments/{name}/evaluate": {
                "post": {"summary": "Measure an alignment's path against the path in force, same trials (admin)",
                         "security": secured, "parameters": [name_param],
                         "requestBody": _json_body({"eval_dir": TEXT, "n_enroll": _integer(1, 20),
                                                    "max_speakers": _integer(1, 100000),
                                                    "max_queries": _integer(1, 1000),
                                                    "crops": {"type": "array", "maxItems": 5, "items": {
                                                        "type": "number", "minimum": 0.5, "maximum": 30}},
                                                    "tolerance_eer_points": {"type": "number", "minimum": 0},
                                                    "tolerance_top1_points": {"type": "number", "minimum": 0}},
                                                   [], body_required=False),
                         "responses": _responses({"202": _json(JOB_ACCEPTED, "A job; its result is the evaluation")},
                                                 "400", "401", "403", "404", "409", "413")}},
            "/v1/alignments/{name}/retire": {
                "post": {"summary": "Retire an alignment that is not in force (admin)", "security": secured,
                         "parameters": [name_param],
                         "responses": _responses({"200": _json(REGISTRY, "The registry")}, "401", "403", "404",
                                                 "409")}},
            "/v1/models": {
                "get": {"summary": "The runtime path in force, model versions and alignments with their states",
                        "security": secured,
                        "responses": _responses({"200": _json(REGISTRY)}, "401", "403")},
                "post": {"summary": "Register an installed model version (admin)", "security": secured,
                         "requestBody": _json_body({"name": TEXT}, ["name"]),
                         "responses": _responses({"201": _json(REGISTRY, "Registered")}, "400", "401", "403", "404",
                                                 "409", "413")}},
            "/v1/models/history": {
                "get": {"summary": "Deployments and the registry's audit log (admin)", "security": secured,
                        "parameters": [_query("limit", _integer(1, 1000))],
                        "responses": _responses({"200": _json_object("{deployments, events}", {
                            "deployments": {"type": "array", "items": {"$ref": DEPLOYMENT}},
                            "events": {"type": "array", "items": {"type": "object"}}})}, "400", "401", "403")}},
            "/v1/models/{name}/reembed": {
                "post": {"summary": "Re-embed every retained enrollment with a model, in background jobs (admin)",
                         "security": secured, "parameters": [name_param],
                         "requestBody": _json_body({"bridge": {**TEXT, "description":
                                                               "alignment for enrollments without retained audio"}},
                                                   [], body_required=False),
                         "responses": _responses({"202": _json(JOB_ACCEPTED, "The parent job; progress at "
                                                                             "/v1/jobs/{id}")},
                                                 "400", "401", "403", "404", "409", "413")}},
            "/v1/models/{name}/retire": {
                "post": {"summary": "Retire a model version not in force; its space's vectors are deleted (admin)",
                         "security": secured, "parameters": [name_param],
                         "responses": _responses({"200": _json(REGISTRY, "The registry")}, "401", "403", "404",
                                                 "409")}},
            "/v1/deployments": {
                "post": {"summary": "Put an alignment's runtime path in force, gated by its evaluation (admin)",
                         "security": secured,
                         "requestBody": _json_body({"alignment": TEXT, "force": {"type": "boolean"}}, ["alignment"]),
                         "responses": _responses({"201": _json(DEPLOYMENT, "The new deployment")},
                                                 "400", "401", "403", "404", "409", "413")}},
            "/v1/deployments/rollback": {
                "post": {"summary": "Go back to the path in force before the current one (admin)",
                         "security": secured,
                         "responses": _responses({"201": _json(DEPLOYMENT, "The new deployment")}, "401", "403",
                                                 "409")}},
        },
    }
