"""REST API v1: thin handlers that parse input, call services, render JSON."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import jobs
from app.store import models
from app.web import auth
from app.web.inputs import MAX_CANDIDATES, MAX_ID, as_int, parse_json, text_field
from app.web.auth import current_actor, current_key_id, require_any_key, require_scope
from app.errors import ApiError, bad_request
from app.web.openapi import openapi_document
from app.services import recognition, registry, speakers as speaker_service
from app.services.enrollment import submit_enrollment

bp = Blueprint("v1", __name__)


def _services():
    return current_app.extensions["nessa"]


# -- input parsing -----------------------------------------------------------------
def _json_body(allowed: set[str], required: set[str]) -> dict:
    raw = request.get_data(cache=True)
    if not request.is_json:
        raise bad_request("invalid_content_type", "Send a JSON body with Content-Type: application/json.",
                          content_type=request.content_type)
    body = parse_json(raw or b"")
    if not isinstance(body, dict):
        raise bad_request("invalid_json", "The JSON body must be an object.", type=type(body).__name__)
    unknown = sorted(set(body) - allowed)
    missing = sorted(required - set(body))
    if unknown or missing:
        raise bad_request("invalid_fields", "Unknown or missing fields.",
                          unknown=unknown, missing=missing, allowed=sorted(allowed))
    return body


def _form_fields(allowed_fields: set[str], allowed_files: set[str], required_files: set[str]):
    if not request.mimetype or not request.mimetype.startswith("multipart/form-data"):
        raise bad_request("invalid_content_type", "Send multipart/form-data with the audio in the 'audio' field.",
                          content_type=request.content_type)
    if None in request.form or None in request.files:
        raise bad_request("invalid_multipart", "Every part of a multipart body needs a name "
                          "(Content-Disposition: form-data; name=...).")
    unknown = sorted((set(request.form) - allowed_fields) | (set(request.files) - allowed_files))
    missing = sorted(required_files - set(request.files))
    if unknown or missing:
        raise bad_request("invalid_fields", "Unknown or missing form fields.", unknown=unknown, missing=missing,
                          allowed=sorted(allowed_fields | allowed_files))


def _int_field(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
    number = as_int(value)
    if number is None:
        raise bad_request("invalid_field", f"'{name}' must be an integer.", field=name, value=value)
    if number < minimum or (maximum is not None and number > maximum):
        raise bad_request("invalid_field", f"'{name}' must be between {minimum} and {maximum}.",
                          field=name, value=number)
    return number


def _candidate_ids() -> list[int] | None:
    """`candidates` as repeated fields, a comma-separated list, or a JSON array."""
    values = request.form.getlist("candidates")
    if not values:
        return None
    items: list = []
    for value in values:
        value = value.strip()
        if value.startswith("["):
            parsed = parse_json(value, "candidates")
            items.extend(parsed if isinstance(parsed, list) else [parsed])
        else:
            items.extend(v for v in value.split(",") if v.strip())
        if len(items) > MAX_CANDIDATES:
            raise bad_request("invalid_field", f"'candidates' holds at most {MAX_CANDIDATES} ids.",
                              field="candidates")
    ids = [_int_field("candidates", item, maximum=MAX_ID) for item in items]
    if not ids:
        raise bad_request("invalid_field", "'candidates' is empty.", field="candidates")
    return ids


def _audio_bytes() -> bytes:
    return request.files["audio"].read()


# -- public ------------------------------------------------------------------------
@bp.get("/v1/health")
def health():
    services = _services()
    with services.session() as session:
        session.execute(sa.text("SELECT 1"))
    with services.session() as session:
        current = registry.deployment_to_dict(registry.current_deployment(session))
    return jsonify({"status": "ok", "index": services.gallery.sizes(),
                    "enroll_model": current["enrollment_space"] if current else None,
                    "runtime_model": current["runtime_model"] if current else None,
                    "deployment": current["id"] if current else None})


@bp.get("/metrics")
def metrics():
    _services().gallery.sync()
    registry = current_app.extensions["nessa_metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/v1/openapi.json")
def openapi():
    return jsonify(openapi_document())


# -- speakers ------------------------------------------------------------------------
@bp.post("/v1/speakers")
@require_scope("enroll")
def create_speaker():
    body = _json_body({"name", "external_id"}, {"name"})
    name = text_field(body["name"], "name", strip=True)
    external_id = text_field(body["external_id"], "external_id") if body.get("external_id") is not None else None
    services = _services()
    with services.session() as session:
        speaker = speaker_service.create_speaker(session, name=name, external_id=external_id)
        session.commit()
        body = speaker_service.speaker_to_dict(session, speaker)
    return jsonify(body), 201, {"Location": f"/v1/speakers/{body['id']}"}


@bp.get("/v1/speakers")
@require_scope("enroll")
def list_speakers():
    limit = _int_field("limit", request.args.get("limit", 100), maximum=1000)
    offset = _int_field("offset", request.args.get("offset", 0), minimum=0, maximum=MAX_ID)
    services = _services()
    with services.session() as session:
        total = session.scalar(sa.select(sa.func.count(models.Speaker.id)))
        rows = session.scalars(sa.select(models.Speaker).order_by(models.Speaker.id).limit(limit).offset(offset)).all()
        items = [speaker_service.speaker_to_dict(session, s) for s in rows]
    return jsonify({"speakers": items, "total": total, "limit": limit, "offset": offset})


@bp.get("/v1/speakers/<id:speaker_id>")
@require_scope("enroll")
def get_speaker(speaker_id: int):
    services = _services()
    with services.session() as session:
        return jsonify(speaker_service.speaker_to_dict(session, speaker_service.get_speaker(session, speaker_id)))


@bp.delete("/v1/speakers/<id:speaker_id>")
@require_scope("enroll")
def delete_speaker(speaker_id: int):
    services = _services()
    with services.session() as session:
        files = speaker_service.delete_speaker(session, speaker_id)
        session.commit()
    speaker_service.remove_files(files)
    speaker_service.scrub_deleted_speakers(services.engine)
    services.gallery.sync()
    return "", 204


@bp.post("/v1/speakers/<id:speaker_id>/enrollments")
@require_scope("enroll")
def enroll(speaker_id: int):
    services = _services()
    with services.session() as session:
        speaker_service.get_speaker(session, speaker_id)  # 404 before parsing the upload
    _form_fields(set(), {"audio"}, {"audio"})
    enrollment, job = submit_enrollment(services, speaker_id, _audio_bytes(), created_by_key_id=current_key_id())
    return (jsonify({"job": _job_to_dict(job), "enrollment": speaker_service.enrollment_to_dict(enrollment)}),
            202, {"Location": f"/v1/jobs/{job.id}"})


# -- jobs --------------------------------------------------------------------------
def _job_to_dict(job: models.Job, children: dict | None = None) -> dict:
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    body = {"id": job.id, "kind": job.kind, "status": job.status, "attempts": job.attempts,
            "max_attempts": job.max_attempts, "progress": job.progress, "error": job.error,
            "result": job.result, "payload": job.payload, "parent_id": job.parent_id,
            "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at)}
    if children:
        body["children"] = children
    return body


def _readable_by_this_key(job: models.Job) -> bool:
    """A job (its result may be a diarization of someone's recording) is for the key that
    created it, and admin keys."""
    return auth.current_key_is_admin() or (job.created_by_key_id is not None
                                           and job.created_by_key_id == current_key_id())


@bp.get("/v1/jobs/<id:job_id>")
@require_any_key
def get_job(job_id: int):
    services = _services()
    with services.session() as session:
        job = jobs.get_job(session, job_id)
        # another key's job looks exactly like a missing one, so ids cannot be probed
        if job is None or not _readable_by_this_key(job):
            raise ApiError(404, "job_not_found", f"No job with id {job_id}.", {"id": job_id})
        return jsonify(_job_to_dict(job, jobs.children_summary(session, job.id)))


# -- runtime -----------------------------------------------------------------------
@bp.post("/v1/identify")
@require_scope("identify")
def identify():
    _form_fields({"top_k", "candidates"}, {"audio"}, {"audio"})
    top_k = _int_field("top_k", request.form.get("top_k", 5), maximum=100)
    candidates = _candidate_ids()
    services = _services()
    if candidates:
        with services.session() as session:
            known = set(session.scalars(sa.select(models.Speaker.id).where(models.Speaker.id.in_(candidates))))
        missing = sorted(set(candidates) - known)
        if missing:
            raise ApiError(404, "speaker_not_found", "Unknown speaker ids in 'candidates'.", {"ids": missing})
    result = recognition.identify(services, _audio_bytes(), top_k=top_k, candidates=candidates)
    _observe_embedding(result)
    return jsonify(result)


@bp.post("/v1/verify")
@require_scope("identify")
def verify():
    _form_fields({"speaker_id"}, {"audio"}, {"audio"})
    if "speaker_id" not in request.form:
        raise bad_request("invalid_fields", "Missing form field 'speaker_id'.", missing=["speaker_id"])
    speaker_id = _int_field("speaker_id", request.form["speaker_id"], maximum=MAX_ID)
    result = recognition.verify(_services(), _audio_bytes(), speaker_id=speaker_id)
    _observe_embedding(result)
    return jsonify(result)


def _observe_embedding(result: dict) -> None:
    embed_ms = result.get("timings_ms", {}).get("embed")
    if embed_ms is not None:
        metrics = current_app.extensions["nessa_metrics"]
        metrics.embedding.labels(result["models"]["runtime_model"]).observe(embed_ms / 1e3)


@bp.post("/v1/diarize")
@require_scope("identify")
def diarize():
    from app.services import diarization

    _form_fields({"candidates", "num_speakers", "min_speakers", "max_speakers"}, {"audio"}, {"audio"})
    options = {"candidates": _candidate_ids()}
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        if name in request.form:
            options[name] = _int_field(name, request.form[name], maximum=100)
    response_format = request.args.get("format", "json")
    if response_format not in ("json", "rttm"):
        raise bad_request("invalid_field", "'format' must be json or rttm.", field="format", value=response_format)
    status, body = diarization.submit_or_run(_services(), _audio_bytes(), created_by_key_id=current_key_id(),
                                             **options)
    if status == 200 and response_format == "rttm":
        return Response(diarization.rttm_text(body), mimetype="text/plain")
    headers = {"Location": f"/v1/jobs/{body['job']['id']}"} if status == 202 else {}
    return jsonify(body), status, headers


# -- admin -------------------------------------------------------------------------
def _key_expiry(body: dict):
    """`expires_in_days` or `expires_at` (ISO 8601 with a time zone), at most one; None: never."""
    days, at = body.get("expires_in_days"), body.get("expires_at")
    if days is not None and at is not None:
        raise bad_request("invalid_fields", "Give 'expires_in_days' or 'expires_at', not both.",
                          fields=["expires_in_days", "expires_at"])
    if days is not None:
        return auth.expiry_in_days(days)
    if at is None:
        return None
    try:
        return dt.datetime.fromisoformat(at)
    except (TypeError, ValueError):
        raise bad_request("invalid_expiry", "'expires_at' must be an ISO 8601 date and time with a time zone, "
                          "e.g. 2030-01-31T00:00:00Z.", field="expires_at", value=at)


@bp.post("/v1/keys")
@require_scope("admin")
def create_key():
    body = _json_body({"name", "scopes", "expires_in_days", "expires_at"}, {"scopes"})
    scopes = body["scopes"]
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise bad_request("invalid_field", "'scopes' must be a list of strings.", field="scopes")
    expires_at = _key_expiry(body)
    name = text_field(body["name"], "name", strip=True) if body.get("name") else "api"
    services = _services()
    with services.session() as session:
        key, row = auth.create_api_key(session, name=name, scopes=scopes,
                                       expires_at=expires_at)
        session.commit()
        return jsonify({**auth.key_to_dict(row), "key": key}), 201


@bp.get("/v1/keys")
@require_scope("admin")
def list_keys():
    with _services().session() as session:
        return jsonify({"keys": [auth.key_to_dict(row) for row in auth.list_api_keys(session)]})


@bp.delete("/v1/keys/<id:key_id>")
@require_scope("admin")
def revoke_key(key_id: int):
    with _services().session() as session:
        auth.revoke_api_key(session, key_id, keep_an_admin=True)
        session.commit()
    return "", 204


@bp.get("/v1/alignments")
@require_scope("identify")
def list_alignments():
    with _services().session() as session:
        return jsonify({"alignments": registry.models_overview(session)["alignments"]})


# -- model registry ------------------------------------------------------------------
def _name_field(body: dict, field: str) -> str:
    return text_field(body.get(field), field, strip=True)


def _bool_field(body: dict, field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise bad_request("invalid_field", f"'{field}' must be true or false.", field=field)
    return value


@bp.get("/v1/models")
@require_scope("identify")
def list_models():
    with _services().session() as session:
        return jsonify(registry.models_overview(session))


@bp.get("/v1/models/history")
@require_scope("admin")
def models_history():
    limit = _int_field("limit", request.args.get("limit", 100), maximum=1000)
    with _services().session() as session:
        return jsonify(registry.history(session, limit))


@bp.post("/v1/models")
@require_scope("admin")
def register_model():
    name = _name_field(_json_body({"name"}, {"name"}), "name")
    with _services().session() as session:
        registry.register_model(session, name, actor=current_actor())
        session.commit()
        return jsonify(registry.models_overview(session)), 201


@bp.post("/v1/models/<name:name>/retire")
@require_scope("admin")
def retire_model(name: str):
    services = _services()
    with services.session() as session:
        registry.retire_model(session, name, actor=current_actor())
        session.commit()
        body = registry.models_overview(session)
    services.gallery.sync()
    return jsonify(body)


@bp.post("/v1/models/<name:name>/reembed")
@require_scope("admin")
def reembed_model(name: str):
    from app.services.reembed import start_reembed

    body = _json_body({"bridge"}, set()) if request.get_data() else {}
    bridge = _name_field(body, "bridge") if body.get("bridge") is not None else None
    job = start_reembed(_services(), name, bridge=bridge, actor=current_actor(), created_by_key_id=current_key_id())
    return jsonify({"job": _job_to_dict(job)}), 202, {"Location": f"/v1/jobs/{job.id}"}


@bp.post("/v1/alignments")
@require_scope("admin")
def register_alignment():
    import pathlib

    path = _name_field(_json_body({"path"}, {"path"}), "path")
    with _services().session() as session:
        row = registry.register_artifact(session, pathlib.Path(path), actor=current_actor())
        session.commit()
        return jsonify({"name": row.name, "state": row.state, "source_version": row.source_version,
                        "target_version": row.target_version, "sha256": row.sha256}), 201


@bp.post("/v1/alignments/<name:name>/evaluate")
@require_scope("admin")
def evaluate_alignment(name: str):
    from app.services.model_jobs import submit_evaluation

    body = _json_body({"eval_dir", "n_enroll", "max_speakers", "max_queries", "crops", "tolerance_eer_points",
                       "tolerance_top1_points"}, set()) if request.get_data() else {}
    options = {}
    for field, maximum in (("n_enroll", 20), ("max_speakers", 100000), ("max_queries", 1000)):
        if body.get(field) is not None:
            options[field] = _int_field(field, body[field], maximum=maximum)
    tolerance = {}
    for field in ("tolerance_eer_points", "tolerance_top1_points"):
        if body.get(field) is not None:
            if not isinstance(body[field], (int, float)) or isinstance(body[field], bool) or body[field] < 0:
                raise bad_request("invalid_field", f"'{field}' must be a non-negative number.", field=field)
            tolerance[field.removeprefix("tolerance_")] = float(body[field])
    if body.get("crops") is not None:
        crops = body["crops"]
        if (not isinstance(crops, list) or len(crops) > 5
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0.5 <= c <= 30 for c in crops)):
            raise bad_request("invalid_field", "'crops' must be a list of at most 5 durations in seconds (0.5-30).",
                              field="crops")
        options["crops"] = [float(c) for c in crops]
    eval_dir = _name_field(body, "eval_dir") if body.get("eval_dir") is not None else None
    job = submit_evaluation(_services(), name, eval_dir=eval_dir, options=options, tolerance=tolerance,
                            actor=current_actor(), created_by_key_id=current_key_id())
    return jsonify({"job": _job_to_dict(job)}), 202, {"Location": f"/v1/jobs/{job.id}"}


@bp.post("/v1/alignments/<name:name>/retire")
@require_scope("admin")
def retire_alignment(name: str):
    with _services().session() as session:
        registry.retire_alignment(session, name, actor=current_actor())
        session.commit()
        return jsonify(registry.models_overview(session))


@bp.post("/v1/deployments")
@require_scope("admin")
def activate_path():
    body = _json_body({"alignment", "force"}, {"alignment"})
    alignment, force = _name_field(body, "alignment"), _bool_field(body, "force")
    with _services().session() as session:
        deployment = registry.activate(session, alignment, actor=current_actor(), force=force)
        session.commit()
        return jsonify(registry.deployment_to_dict(deployment)), 201


@bp.post("/v1/deployments/rollback")
@require_scope("admin")
def rollback_path():
    with _services().session() as session:
        deployment = registry.rollback(session, actor=current_actor())
        session.commit()
        return jsonify(registry.deployment_to_dict(deployment)), 201
