"""An enrollment whose job is given up because its workers kept dying ends 'failed',
in the same transaction as its job, instead of staying 'processing' forever."""
from __future__ import annotations

import datetime as dt


from app.store import models
from app.store.job_queue import jobs


def test_exhausted_lost_job_fails_its_enrollment(harness):
    speaker_id = harness.create_speaker("Lost")
    with harness.services.session() as session:
        enrollment = models.Enrollment(speaker_id=speaker_id, status="processing", audio_path=None,
                                       audio_sha256="0" * 64, audio_bytes=1, duration_s=1.0)
        session.add(enrollment)
        session.flush()
        job = jobs.enqueue(session, "enroll", {"enrollment_id": enrollment.id}, max_attempts=2)
        session.flush()
        # the last attempt's worker died: running, lease long expired, no attempts left
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        job.status, job.attempts, job.worker_id = "running", 2, "dead-worker"
        job.lease_expires_at, job.started_at = past, past
        session.commit()
        job_id, enrollment_id = job.id, enrollment.id

    assert harness.drain_jobs() == 0  # nothing to run: the job is given up, not claimed
    with harness.services.session() as session:
        job = session.get(models.Job, job_id)
        enrollment = session.get(models.Enrollment, enrollment_id)
        assert job.status == "failed" and "worker lost" in job.error
        assert enrollment.status == "failed" and "lost" in enrollment.error
    speaker = harness.client.get(f"/v1/speakers/{speaker_id}", headers=harness.headers("enroll")).get_json()
    assert speaker["enrollments"][0]["status"] == "failed"
