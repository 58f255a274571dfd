"""Submitting an enrollment looks its speaker up once: the web layer finds it before the
upload is read, and a speaker deleted while its audio was prepared is still a clean 404
that leaves nothing behind."""
from __future__ import annotations

import pytest

from app.errors import ApiError
from app.services import enrollment, speakers
from tests.conftest import requires_shared_data

pytestmark = pytest.mark.data


def _speech(min_bytes: int = 150_000) -> bytes:
    """A LibriSpeech utterance long enough to enroll with."""
    root = requires_shared_data("librispeech", "test-other")
    speaker = sorted(p for p in root.iterdir() if p.is_dir())[0]
    return next(f for f in sorted(speaker.glob("*.flac")) if f.stat().st_size > min_bytes).read_bytes()


def test_an_upload_looks_its_speaker_up_once(harness, monkeypatch):
    speaker_id = harness.create_speaker("Once")
    calls = []
    lookup = speakers.get_speaker
    monkeypatch.setattr(speakers, "get_speaker", lambda *args: calls.append(args[1]) or lookup(*args))
    response = harness.upload(_speech(), f"/v1/speakers/{speaker_id}/enrollments", "enroll")
    assert response.status_code == 202, response.get_json()
    assert calls == [speaker_id]


def test_a_speaker_deleted_while_its_audio_was_prepared_is_404(harness, monkeypatch):
    speaker_id = harness.create_speaker("Gone")
    prepare = enrollment.prepare_audio

    def prepare_then_delete(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        with harness.services.session() as session:
            speakers.delete_speaker(session, speaker_id)
            session.commit()
        return prepared

    monkeypatch.setattr(enrollment, "prepare_audio", prepare_then_delete)
    with pytest.raises(ApiError) as raised:
        enrollment.submit_enrollment(harness.services, speaker_id, _speech())
    assert (raised.value.status, raised.value.code) == (404, "speaker_not_found")
    assert not any(p.is_file() for p in harness.settings.audio_dir.rglob("*"))
