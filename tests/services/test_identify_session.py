"""Identification reads what it must from the database in one session, and scores the
profile vectors the in-memory index holds (the exact bytes the database stores) instead of
reading them again; verification, which reads them from the database, agrees."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from app.services import recognition
from app.store import profiles
from tests.conftest import requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture
def enrolled(harness):
    root = requires_shared_data("librispeech", "test-other")
    ids, queries = [], []
    for speaker in sorted(p for p in root.iterdir() if p.is_dir())[:2]:
        files = [f for f in sorted(speaker.glob("*.flac")) if f.stat().st_size > 150_000]
        speaker_id = harness.create_speaker(speaker.name)
        assert harness.upload(files[0], f"/v1/speakers/{speaker_id}/enrollments", "enroll").status_code == 202
        ids.append(speaker_id)
        queries.append(files[-1].read_bytes())
    harness.drain_jobs()
    harness.services.gallery.sync()  # loads the index
    # applies the log's recent rows once more (a load cannot tell which of them it saw)
    harness.services.gallery.sync()
    return harness, ids, queries


def test_identify_uses_one_session_and_reads_no_profile_vectors(enrolled, monkeypatch):
    harness, ids, queries = enrolled
    sessions = set()
    sa.event.listen(harness.services.session_factory, "after_begin",
                    lambda session, transaction, connection: sessions.add(id(session)))

    def no_database_read(*args, **kwargs):
        raise AssertionError("identify read profile vectors from the database")

    monkeypatch.setattr(profiles, "read", no_database_read)
    monkeypatch.setattr(profiles, "read_all", no_database_read)
    result = recognition.identify(harness.services, queries[0], candidates=ids)
    assert len(sessions) == 1
    assert result["speaker"]["id"] == ids[0]


def test_identify_and_verify_score_alike(enrolled):
    harness, ids, queries = enrolled
    identified = recognition.identify(harness.services, queries[1], top_k=len(ids))
    verified = recognition.verify(harness.services, queries[1], speaker_id=ids[1])
    candidate = next(c for c in identified["candidates"] if c["id"] == ids[1])
    # the same query embedded twice, the same profile from memory and from the database; scored
    # in a batch of profiles or alone, float32 sums may round differently (a few ulp of the LLR)
    assert np.isclose(candidate["score"], verified["score"], rtol=1e-6, atol=1e-6)
    assert (candidate["scoring"], candidate["bridged_profile"]) == (verified["scoring"], verified["bridged_profile"])
