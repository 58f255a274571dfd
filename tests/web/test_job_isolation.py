"""Issue #10, defect 9: a job is readable only by the API key that created it and by admin
keys; to any other key it does not exist (404, exactly as an unknown id), so results such
as a diarization of someone's recording cannot be read by counting up job ids."""
from __future__ import annotations

import pytest

from tests.conftest import ServiceHarness, make_settings, requires_shared_data

pytestmark = [pytest.mark.data]


@pytest.fixture
def service(tmp_path, database_url):
    """The harness with a second key of each scope; long recordings are diarized in jobs."""
    from app.services.keys import create_api_key

    harness = ServiceHarness(make_settings(tmp_path, database_url, diarize_inline_max_seconds=1.0))
    with harness.services.session() as session:
        for scope in ("enroll", "identify", "admin"):
            harness.keys[f"other-{scope}"], _ = create_api_key(session, name=f"other-{scope}", scopes=[scope])
        session.commit()
    yield harness
    harness.close()


def _utterance():
    return sorted(requires_shared_data("librispeech", "test-other", "1688").glob("*.flac"))[0]


def _get_job(harness, job_id: int, key: str):
    return harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers(key))


def _creator(harness, job_id: int) -> int | None:
    from app.store import models

    with harness.services.session() as session:
        return session.get(models.Job, job_id).created_by_key_id


def _key_id(harness, key: str) -> int:
    from app.store import models
    from app.services.keys import hash_key

    with harness.services.session() as session:
        return session.query(models.ApiKey).filter_by(key_hash=hash_key(harness.keys[key])).one().id


def _readers(harness, job_id: int) -> set[str]:
    return {key for key in harness.keys if _get_job(harness, job_id, key).status_code == 200}


def _assert_looks_missing(harness, job_id: int, key: str) -> None:
    """Another key's job answers exactly like an id that was never used."""
    hidden, missing = _get_job(harness, job_id, key), _get_job(harness, 10 ** 9, key)
    assert hidden.status_code == missing.status_code == 404
    body, unknown = hidden.get_json(), missing.get_json()
    assert body["code"] == unknown["code"] == "job_not_found"
    assert body["message"] == unknown["message"].replace(str(10 ** 9), str(job_id))


def test_an_enrollment_job_is_for_its_creator_and_admins(service):
    speaker_id = service.create_speaker("Ada")
    response = service.upload(_utterance(), f"/v1/speakers/{speaker_id}/enrollments", "enroll")
    job_id = response.get_json()["job"]["id"]
    assert _creator(service, job_id) == _key_id(service, "enroll")
    assert _readers(service, job_id) == {"enroll", "admin", "other-admin"}
    for key in ("other-enroll", "identify", "other-identify"):
        _assert_looks_missing(service, job_id, key)


def test_a_diarization_job_is_for_its_creator_and_admins(service):
    response = service.upload(_utterance(), "/v1/diarize", "identify")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job"]["id"]
    assert _creator(service, job_id) == _key_id(service, "identify")
    assert _readers(service, job_id) == {"identify", "admin", "other-admin"}
    for key in ("other-identify", "enroll", "other-enroll"):
        _assert_looks_missing(service, job_id, key)


def test_model_jobs_record_the_admin_key_that_started_them(service):
    headers = service.headers("admin")
    reembed = service.client.post("/v1/models/ge2e-256/reembed", headers=headers)
    assert reembed.status_code == 202, reembed.get_json()
    alignment = service.client.get("/v1/alignments", headers=headers).get_json()["alignments"][0]["name"]
    evaluation = service.client.post(f"/v1/alignments/{alignment}/evaluate", headers=headers)
    assert evaluation.status_code == 202, evaluation.get_json()
    for response in (reembed, evaluation):
        job_id = response.get_json()["job"]["id"]
        assert _creator(service, job_id) == _key_id(service, "admin")
        assert _readers(service, job_id) == {"admin", "other-admin"}


def test_a_job_created_without_a_key_is_for_admins_only(service):
    """Jobs from the CLI or a worker (and jobs queued before keys were recorded)."""
    from app.store.job_queue import jobs

    with service.services.session() as session:
        job = jobs.enqueue(session, "diarize", {"audio_path": "/nowhere.flac"})
        session.commit()
    assert _readers(service, job.id) == {"admin", "other-admin"}
    _assert_looks_missing(service, job.id, "identify")


def test_reading_a_job_still_needs_a_valid_key(service):
    speaker_id = service.create_speaker("Ada")
    job_id = service.upload(_utterance(), f"/v1/speakers/{speaker_id}/enrollments", "enroll").get_json()["job"]["id"]
    assert service.client.get(f"/v1/jobs/{job_id}").status_code == 401
    bogus = {"Authorization": "Bearer nsk_not-a-real-key"}
    assert service.client.get(f"/v1/jobs/{job_id}", headers=bogus).status_code == 401
