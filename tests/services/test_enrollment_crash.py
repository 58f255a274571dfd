"""Durability: SIGKILL the `nessa worker` process in the middle of an enrollment job,
start another, and the accepted enrollment still completes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.conftest import REPO_ROOT, ServiceHarness, make_settings, requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _nessa_worker(settings, log_path):
    env = {**os.environ, "NESSA_DATABASE_URL": settings.resolved_database_url,
           "NESSA_DATA_DIR": str(settings.data_dir), "NESSA_JOB_LEASE_SECONDS": "2",
           "NESSA_WORKER_POLL_SECONDS": "0.1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "app.cli", "worker"]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def _job(harness, job_id):
    from app.store import models

    with harness.services.session() as session:
        job = session.get(models.Job, job_id)
        return job.status, job.attempts


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_worker_loses_no_enrollment(tmp_path, database_url):
    utterance = sorted(requires_shared_data("librispeech", "test-other").glob("*/*.flac"))[0]
    harness = ServiceHarness(make_settings(tmp_path, database_url))
    log_path = tmp_path / "worker.log"
    try:
        speaker_id = harness.create_speaker("Crash test")
        response = harness.upload(utterance, f"/v1/speakers/{speaker_id}/enrollments", "enroll")
        assert response.status_code == 202
        job_id = response.get_json()["job"]["id"]

        first = _nessa_worker(harness.settings, log_path)
        # The job is claimed and running: the worker is loading models / embedding.
        _wait(lambda: _job(harness, job_id) == ("running", 1), 60, "the first worker to start the job")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert _job(harness, job_id) == ("running", 1)  # dead worker, job still claimed

        second = _nessa_worker(harness.settings, log_path)
        try:
            _wait(lambda: _job(harness, job_id)[0] in ("succeeded", "failed"), 120, "the job to finish")
        finally:
            second.terminate()
            second.wait(10)
        status, attempts = _job(harness, job_id)
        assert (status, attempts) == ("succeeded", 2), log_path.read_text()[-3000:]
        speaker = harness.client.get(f"/v1/speakers/{speaker_id}", headers=harness.headers("enroll")).get_json()
        assert [e["status"] for e in speaker["enrollments"]] == ["done"]
        assert {p["space"] for p in speaker["profiles"]} == {"campplus-192", "ge2e-256"}
        from app.store import models

        with harness.services.session() as session:
            count = session.scalar(sa.select(sa.func.count()).select_from(models.Embedding))
        assert count == 2  # the retry replaced, not duplicated, any partial work
    finally:
        harness.close()
