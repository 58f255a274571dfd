"""The OpenAPI 3.1 description of /v1, served at /v1/openapi.json."""
from __future__ import annotations


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("Malformed request (bad JSON, wrong or missing fields, unreadable audio)."),
    "401": _error("Missing or invalid API key."),
    "403": _error("The API key lacks the required scope."),
    "404": _error("Unknown id."),
    "409": _error("Conflicts with the registry's state (gate failed, not evaluated, in use, retired)."),
    "413": _error("Upload larger than the configured limit."),
    "422": _error("Audio too long, or too little speech after voice activity detection."),
}


def _responses(ok: dict, *codes: str) -> dict:
    return {**ok, **{c: ERRORS[c] for c in codes}}


def _audio_form(extra: dict | None = None, required=("audio",)) -> dict:
    properties = {"audio": {"type": "string", "format": "binary",
                            "description": "WAV, FLAC, OGG (MP3 where libsndfile reads it); any rate and channels."}}
    properties.update(extra or {})
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": list(required)}}}}


def _json(ref: str, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _json_body(properties: dict, required_fields: list, *, body_required: bool = True) -> dict:
    return {"required": body_required, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required_fields}}}}


def openapi_document() -> dict:
    secured = [{"bearerAuth": []}]
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    speaker_id = {"name": "speaker_id", "in": "path", "required": True, "schema": {"type": "integer"}}
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
                    "id": {"type": "integer"}, "status": {"type": "string",
                                                          "enum": ["queued", "processing", "done", "failed"]},
                    "duration_s": {"type": "number"}, "speech_s": {"type": "number"},
                    "audio_sha256": {"type": "string"}, "audio_retained": {"type": "boolean"}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "kind": {"type": "string"},
                    "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
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
            },
        },
        "paths": {
            "/v1/health": {"get": {"summary": "Liveness and index sizes (no key needed)", "security": [],
                                   "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text/plain exposition"}}}},
            "/v1/speakers": {
                "post": {"summary": "Create a speaker", "security": secured,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {"name": {"type": "string", "maxLength": 200},
                                            "external_id": {"type": "string", "maxLength": 200}}}}}},
                         "responses": _responses({"201": _json("#/components/schemas/Speaker", "Created")},
                                                 "400", "401", "403")},
                "get": {"summary": "List speakers", "security": secured,
                        "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}},
                                       {"name": "offset", "in": "query", "schema": {"type": "integer"}}],
                        "responses": _responses({"200": {"description": "OK"}}, "400", "401", "403")}},
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
                         "responses": _responses({"202": {"description": "Accepted; poll the job",
                                                          "content": {"application/json": {"schema": {
                                                              "type": "object", "properties": {
                                                                  "job": {"$ref": "#/components/schemas/Job"},
                                                                  "enrollment": {"$ref": "#/components/schemas/Enrollment"}}}}}}},
                                                 "400", "401", "403", "404", "413", "422")}},
            "/v1/jobs/{job_id}": {
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "Job status; only for the key that created the job and admin keys "
                                   "(any other key gets 404)", "security": secured,
                        "responses": _responses({"200": _json("#/components/schemas/Job")}, "401", "403", "404")}},
            "/v1/identify": {
                "post": {"summary": "Who is speaking? (open set: speaker null when unknown)", "security": secured,
                         "requestBody": _audio_form({
                             "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
                             "candidates": {"type": "array", "items": {"type": "integer"},
                                            "description": "restrict to these speaker ids"}}),
                         "responses": _responses({"200": _json("#/components/schemas/Identification")},
                                                 "400", "401", "403", "404", "413", "422")}},
            "/v1/verify": {
                "post": {"summary": "Is this the claimed speaker?", "security": secured,
                         "requestBody": _audio_form({"speaker_id": {"type": "integer"}}, ("audio", "speaker_id")),
                         "responses": _responses({"200": _json("#/components/schemas/Verification")},
                                                 "400", "401", "403", "404", "413", "422")}},
            "/v1/diarize": {
                "post": {"summary": "Who spoke when, with speakers named against the gallery (unknown-N otherwise)",
                         "security": secured,
                         "parameters": [{"name": "format", "in": "query",
                                         "schema": {"type": "string", "enum": ["json", "rttm"]}}],
                         "requestBody": _audio_form({
                             "candidates": {"type": "array", "items": {"type": "integer"}},
                             "num_speakers": {"type": "integer"}, "min_speakers": {"type": "integer"},
                             "max_speakers": {"type": "integer"}}),
                         "responses": _responses({
                             "200": {"description": "segments [{start, end, label, speaker, score}] and speakers"},
                             "202": {"description": "long recording: a job; the same result at /v1/jobs/{id}"}},
                             "400", "401", "403", "404", "413", "422")}},
            "/v1/keys": {
                "post": {"summary": "Create an API key (admin)", "security": secured,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["scopes"],
                             "properties": {"name": {"type": "string"},
                                            "scopes": {"type": "array", "items": {
                                                "type": "string", "enum": ["enroll", "identify", "admin"]}},
                                            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                                            "expires_at": {"type": "string", "format": "date-time",
                                                           "description": "with a time zone; not with "
                                                                          "expires_in_days"}}}}}},
                         "responses": _responses({"201": _json("#/components/schemas/ApiKey",
                                                               "Created; the key is shown once, in `key`")},
                                                 "400", "401", "403")},
                "get": {"summary": "Every API key with its state, last use and expiry (admin)", "security": secured,
                        "responses": _responses({"200": {"description": "OK", "content": {"application/json": {
                            "schema": {"type": "object", "properties": {"keys": {
                                "type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}}}}}}},
                            "401", "403")}},
            "/v1/keys/{key_id}": {
                "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "delete": {"summary": "Revoke an API key (admin); revoking again is fine. The last active admin "
                                      "key cannot be revoked here (409 last_admin_key; the CLI can)",
                           "security": secured,
                           "responses": _responses({"204": {"description": "Revoked"}}, "401", "403", "404", "409")}},
            "/v1/alignments": {
                "get": {"summary": "Registered alignment artifacts", "security": secured,
                        "responses": _responses({"200": {"description": "OK"}}, "401", "403")},
                "post": {"summary": "Register an alignment artifact directory (admin)", "security": secured,
                         "requestBody": _json_body({"path": {"type": "string"}}, ["path"]),
                         "responses": _responses({"201": {"description": "Registered"}},
                                                 "400", "401", "403", "404", "409")}},
            "/v1/alignments/{name}/evaluate": {
                "post": {"summary": "Measure an alignment's path against the path in force, same trials (admin)",
                         "security": secured, "parameters": [name_param],
                         "requestBody": _json_body({"eval_dir": {"type": "string"}, "n_enroll": {"type": "integer"},
                                                    "max_speakers": {"type": "integer"},
                                                    "max_queries": {"type": "integer"},
                                                    "crops": {"type": "array", "items": {"type": "number"}},
                                                    "tolerance_eer_points": {"type": "number"},
                                                    "tolerance_top1_points": {"type": "number"}}, [], body_required=False),
                         "responses": _responses({"202": {"description": "A job; its result is the evaluation"}},
                                                 "400", "401", "403", "404")}},
            "/v1/alignments/{name}/retire": {
                "post": {"summary": "Retire an alignment that is not in force (admin)", "security": secured,
                         "parameters": [name_param],
                         "responses": _responses({"200": {"description": "The registry"}}, "401", "403", "404", "409")}},
            "/v1/models": {
                "get": {"summary": "The runtime path in force, model versions and alignments with their states",
                        "security": secured,
                        "responses": _responses({"200": {"description": "{active, models, alignments}"}}, "401", "403")},
                "post": {"summary": "Register an installed model version (admin)", "security": secured,
                         "requestBody": _json_body({"name": {"type": "string"}}, ["name"]),
                         "responses": _responses({"201": {"description": "Registered"}}, "400", "401", "403", "404",
                                                 "409")}},
            "/v1/models/history": {
                "get": {"summary": "Deployments and the registry's audit log (admin)", "security": secured,
                        "responses": _responses({"200": {"description": "{deployments, events}"}}, "401", "403")}},
            "/v1/models/{name}/reembed": {
                "post": {"summary": "Re-embed every retained enrollment with a model, in background jobs (admin)",
                         "security": secured, "parameters": [name_param],
                         "requestBody": _json_body({"bridge": {"type": "string", "description":
                                                               "alignment for enrollments without retained audio"}},
                                                   [], body_required=False),
                         "responses": _responses({"202": {"description": "The parent job; progress at /v1/jobs/{id}"}},
                                                 "400", "401", "403", "404", "409")}},
            "/v1/models/{name}/retire": {
                "post": {"summary": "Retire a model version not in force; its space's vectors are deleted (admin)",
                         "security": secured, "parameters": [name_param],
                         "responses": _responses({"200": {"description": "The registry"}}, "401", "403", "404", "409")}},
            "/v1/deployments": {
                "post": {"summary": "Put an alignment's runtime path in force, gated by its evaluation (admin)",
                         "security": secured,
                         "requestBody": _json_body({"alignment": {"type": "string"}, "force": {"type": "boolean"}},
                                                   ["alignment"]),
                         "responses": _responses({"201": {"description": "The new deployment"}},
                                                 "400", "401", "403", "404", "409")}},
            "/v1/deployments/rollback": {
                "post": {"summary": "Go back to the path in force before the current one (admin)",
                         "security": secured,
                         "responses": _responses({"201": {"description": "The new deployment"}}, "401", "403", "409")}},
        },
    }
