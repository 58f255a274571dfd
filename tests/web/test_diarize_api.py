"""POST /v1/diarize through the real pipeline on real audio."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ServiceHarness, make_settings, requires_shared_data

pytestmark = [pytest.mark.data]


@pytest.fixture
def sample_bytes():
    return (requires_shared_data("conversations", "pyannote-sample") / "sample.wav").read_bytes()


def test_diarize_returns_segments_and_rttm(harness, sample_bytes):
    response = harness.upload(sample_bytes, "/v1/diarize", "identify")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    labels = {s["label"] for s in body["segments"]}
    assert body["num_speakers"] == 2 and labels == {"unknown-1", "unknown-2"}  # nobody is enrolled
    assert all(s["speaker"] is None and s["end"] > s["start"] for s in body["segments"])
    assert body["models"]["runtime_model"] == "ge2e-256"
    rttm = harness.upload(sample_bytes, "/v1/diarize?format=rttm", "identify")
    assert rttm.status_code == 200 and rttm.mimetype == "text/plain"
    lines = rttm.get_data(as_text=True).strip().splitlines()
    assert len(lines) == len(body["segments"])
    fields = lines[0].split()
    assert fields[0] == "SPEAKER" and len(fields) == 10 and float(fields[4]) > 0


def test_diarize_bad_input(harness):
    silence = io.BytesIO()
    sf.write(silence, np.zeros(16000 * 3, dtype=np.float32), 16000, format="WAV")
    empty = harness.upload(silence.getvalue(), "/v1/diarize", "identify")
    assert empty.status_code == 200 and empty.get_json()["segments"] == []
    bad = harness.upload(b"not audio" * 50, "/v1/diarize", "identify")
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_audio"
    hints = harness.upload(silence.getvalue(), "/v1/diarize", "identify", min_speakers="4", max_speakers="2")
    assert hints.status_code == 400 and hints.get_json()["code"] == "invalid_speaker_hints"
    fmt = harness.upload(silence.getvalue(), "/v1/diarize?format=xml", "identify")
    assert fmt.status_code == 400


def test_long_recordings_become_a_job(tmp_path, database_url, sample_bytes):
    harness = ServiceHarness(make_settings(tmp_path, database_url, diarize_inline_max_seconds=10.0))
    try:
        response = harness.upload(sample_bytes, "/v1/diarize", "identify")
        assert response.status_code == 202
        job_id = response.get_json()["job"]["id"]
        assert harness.drain_jobs() == 1
        job = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers("identify")).get_json()
        assert job["status"] == "succeeded"
        assert job["result"]["num_speakers"] == 2 and job["result"]["segments"]
        assert not list(harness.settings.diarize_audio_dir.glob("*.flac"))  # temp audio removed
        # only the key that asked may read it (and admin keys): any other key is told it does not exist
        assert harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers("enroll")).status_code == 404
    finally:
        harness.close()
