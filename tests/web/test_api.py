"""REST API behaviour that needs no speech: auth, speakers, input validation, docs."""
from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf


def _wav_bytes(signal: np.ndarray, sr: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, sr, format=fmt)
    return buffer.getvalue()


def test_health_needs_no_key_and_reports_index(harness):
    response = harness.client.get("/v1/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_every_other_endpoint_needs_a_key(harness):
    client = harness.client
    for method, url in [("get", "/v1/speakers"), ("post", "/v1/speakers"), ("get", "/v1/speakers/1"),
                        ("delete", "/v1/speakers/1"), ("post", "/v1/speakers/1/enrollments"),
                        ("get", "/v1/jobs/1"), ("post", "/v1/identify"), ("post", "/v1/verify"),
                        ("post", "/v1/keys")]:
        response = getattr(client, method)(url)
        assert response.status_code == 401, (method, url)
        body = response.get_json()
        assert body["code"] == "unauthorized" and set(body) == {"code", "message", "detail"}
    bad = client.get("/v1/speakers", headers={"Authorization": "Bearer nsk_not-a-real-key"})
    assert bad.status_code == 401


def test_wrong_scope_is_forbidden(harness):
    client = harness.client
    forbidden = client.post("/v1/speakers", json={"name": "Ada"}, headers=harness.headers("identify"))
    assert forbidden.status_code == 403
    assert forbidden.get_json()["detail"]["required"] == "enroll"
    assert client.post("/v1/identify", headers=harness.headers("enroll")).status_code == 403
    assert client.post("/v1/keys", json={"scopes": ["enroll"]}, headers=harness.headers("enroll")).status_code == 403
    # admin implies every scope
    assert client.get("/v1/speakers", headers=harness.headers("admin")).status_code == 200


def test_speaker_crud(harness):
    client, headers = harness.client, harness.headers("enroll")
    created = client.post("/v1/speakers", json={"name": "Ada", "external_id": "emp-1"}, headers=headers)
    assert created.status_code == 201
    speaker = created.get_json()
    assert speaker["name"] == "Ada" and speaker["external_id"] == "emp-1" and speaker["enrolled"] is False
    assert client.get(f"/v1/speakers/{speaker['id']}", headers=headers).get_json()["name"] == "Ada"
    listing = client.get("/v1/speakers", headers=headers).get_json()
    assert listing["total"] == 1 and listing["speakers"][0]["id"] == speaker["id"]
    clash = client.post("/v1/speakers", json={"name": "Other", "external_id": "emp-1"}, headers=headers)
    assert clash.status_code == 409
    assert client.delete(f"/v1/speakers/{speaker['id']}", headers=headers).status_code == 204
    missing = client.get(f"/v1/speakers/{speaker['id']}", headers=headers)
    assert missing.status_code == 404 and missing.get_json()["code"] == "speaker_not_found"


def test_malformed_json_and_wrong_fields_are_rejected_without_side_effects(harness):
    client, headers = harness.client, harness.headers("enroll")
    cases = [
        (dict(data=b"{not json", content_type="application/json"), "invalid_json"),
        (dict(data=b"[1, 2]", content_type="application/json"), "invalid_json"),
        (dict(json={"nom": "Ada"}), "invalid_fields"),
        (dict(json={"name": "Ada", "colour": "red"}), "invalid_fields"),
        (dict(json={"name": ""}), "invalid_field"),
        (dict(json={"name": 12}), "invalid_field"),
        (dict(data=b"name=Ada", content_type="application/x-www-form-urlencoded"), "invalid_content_type"),
    ]
    for kwargs, code in cases:
        response = client.post("/v1/speakers", headers=headers, **kwargs)
        assert response.status_code == 400, kwargs
        body = response.get_json()
        assert body["code"] == code, (kwargs, body)
        assert body["message"]
    assert client.get("/v1/speakers", headers=headers).get_json()["total"] == 0


def test_enrollment_input_errors_store_nothing(harness, tmp_path):
    speaker_id = harness.create_speaker("Ada")
    url = f"/v1/speakers/{speaker_id}/enrollments"
    silence = _wav_bytes(np.zeros(16000 * 4, dtype=np.float32))
    noise = _wav_bytes((np.random.default_rng(0).standard_normal(16000 * 4) * 1e-3).astype(np.float32))
    flac = _wav_bytes(np.sin(np.linspace(0, 2000, 16000 * 4)).astype(np.float32) * 0.1, fmt="FLAC")
    cases = [
        (b"", 400, "empty_audio"),
        (b"this is not audio at all, just text" * 20, 400, "invalid_audio"),
        (flac[: len(flac) // 3], 400, "invalid_audio"),
        (silence, 422, "not_enough_speech"),
        (noise, 422, "not_enough_speech"),
    ]
    for data, status, code in cases:
        response = harness.upload(data, url, "enroll")
        assert response.status_code == status, (code, response.get_json())
        body = response.get_json()
        assert body["code"] == code, body
    # 422 says how much speech was found and how much is needed
    detail = harness.upload(silence, url, "enroll").get_json()["detail"]
    assert detail["speech_seconds"] < detail["required_seconds"]
    # wrong field name, unknown speaker
    wrong = harness.client.post(url, data={"file": (io.BytesIO(silence), "a.wav")}, headers=harness.headers("enroll"),
                                content_type="multipart/form-data")
    assert wrong.status_code == 400 and wrong.get_json()["detail"]["missing"] == ["audio"]
    unknown = harness.upload(silence, "/v1/speakers/999999/enrollments", "enroll")
    assert unknown.status_code == 404 and unknown.get_json()["code"] == "speaker_not_found"
    # nothing was stored: no enrollment, no job, no audio file
    speaker = harness.client.get(f"/v1/speakers/{speaker_id}", headers=harness.headers("enroll")).get_json()
    assert speaker["enrollments"] == []
    audio_dir = harness.settings.audio_dir
    assert not any(p.is_file() for p in audio_dir.rglob("*"))


def test_upload_over_limit_is_413(tmp_path, database_url):
    from tests.conftest import ServiceHarness, make_settings

    harness = ServiceHarness(make_settings(tmp_path, database_url, max_upload_bytes=50_000))
    try:
        speaker_id = harness.create_speaker("Ada")
        big = _wav_bytes(np.zeros(16000 * 3, dtype=np.float32))  # ~96 kB
        response = harness.upload(big, f"/v1/speakers/{speaker_id}/enrollments", "enroll")
        assert response.status_code == 413
        assert response.get_json()["code"] == "upload_too_large"
    finally:
        harness.close()


def test_audio_over_duration_limit_is_rejected(tmp_path, database_url):
    from tests.conftest import ServiceHarness, make_settings

    harness = ServiceHarness(make_settings(tmp_path, database_url, max_audio_seconds=2.0))
    try:
        speaker_id = harness.create_speaker("Ada")
        long = _wav_bytes(np.zeros(16000 * 5, dtype=np.float32))
        response = harness.upload(long, f"/v1/speakers/{speaker_id}/enrollments", "enroll")
        assert response.status_code == 422
        assert response.get_json()["code"] == "audio_too_long"
    finally:
        harness.close()


def test_identify_and_verify_validate_fields(harness):
    client = harness.client
    audio = _wav_bytes(np.zeros(16000, dtype=np.float32))
    no_audio = client.post("/v1/identify", data={"top_k": "3"}, headers=harness.headers("identify"),
                           content_type="multipart/form-data")
    assert no_audio.status_code == 400 and no_audio.get_json()["detail"]["missing"] == ["audio"]
    bad_k = harness.upload(audio, "/v1/identify", "identify", top_k="zero")
    assert bad_k.status_code == 400 and bad_k.get_json()["detail"]["field"] == "top_k"
    unknown_candidate = harness.upload(audio, "/v1/identify", "identify", candidates="123456")
    assert unknown_candidate.status_code == 404
    no_speaker = harness.upload(audio, "/v1/verify", "identify")
    assert no_speaker.status_code == 400
    unknown_speaker = harness.upload(audio, "/v1/verify", "identify", speaker_id="424242")
    assert unknown_speaker.status_code == 404
    extra = harness.upload(audio, "/v1/identify", "identify", colour="red")
    assert extra.status_code == 400 and extra.get_json()["detail"]["unknown"] == ["colour"]


def test_job_not_found(harness):
    response = harness.client.get("/v1/jobs/99999", headers=harness.headers("enroll"))
    assert response.status_code == 404 and response.get_json()["code"] == "job_not_found"


def test_openapi_document_covers_the_routes(harness):
    doc = harness.client.get("/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) for r in harness.app.url_map.iter_rules()
              if r.rule.startswith("/v1") or r.rule == "/metrics"}
    documented = set(doc["paths"])
    assert routes <= documented, routes - documented


def test_metrics_exposes_requests_and_index_size(harness):
    harness.client.get("/v1/health")
    text = harness.client.get("/metrics").get_data(as_text=True)
    assert 'nessa_http_requests_total{endpoint="/v1/health",method="GET",status="200"}' in text
    assert "nessa_http_request_seconds_bucket" in text
    assert "nessa_index_profiles" in text


def test_admin_can_create_keys_and_scopes_are_checked(harness):
    response = harness.client.post("/v1/keys", json={"name": "ops", "scopes": ["identify"]},
                                   headers=harness.headers("admin"))
    assert response.status_code == 201
    key = response.get_json()["key"]
    assert harness.client.get("/v1/speakers", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    bad = harness.client.post("/v1/keys", json={"scopes": ["root"]}, headers=harness.headers("admin"))
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_scope"
