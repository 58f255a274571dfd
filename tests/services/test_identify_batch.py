"""POST /v1/identify/batch: several clips in one request, embedded together, each ranked as
POST /v1/identify ranks it; a clip that cannot be identified is an error in its own item, and
the clips' audio together is bounded like one request's. Real models, real speech."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _wav(signal: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def enrolled(harness):
    root = requires_shared_data("librispeech", "test-other")
    ids, queries = [], []
    for speaker in sorted(p for p in root.iterdir() if p.is_dir())[:3]:
        files = [f for f in sorted(speaker.glob("*.flac")) if f.stat().st_size > 150_000]
        speaker_id = harness.create_speaker(speaker.name)
        assert harness.upload(files[0], f"/v1/speakers/{speaker_id}/enrollments", "enroll").status_code == 202
        ids.append(speaker_id)
        queries.append(sf.read(str(files[-1]), dtype="float32")[0][:16000 * 4])  # 4 s of another utterance
    assert harness.drain_jobs() == len(ids)
    return harness, ids, queries


def _batch(harness, clips: list[bytes], **fields):
    form = {"audio": [(io.BytesIO(clip), f"clip{i}.wav") for i, clip in enumerate(clips)], **fields}
    return harness.client.post("/v1/identify/batch", data=form, headers=harness.headers("identify"),
                               content_type="multipart/form-data")


def test_each_clip_is_identified_as_identify_alone_would(enrolled):
    harness, ids, queries = enrolled
    clips = [_wav(q) for q in queries] + [b"not audio at all", _wav(np.zeros(16000 * 3, dtype=np.float32))]
    response = _batch(harness, clips, top_k="2")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [item["index"] for item in body["items"]] == list(range(len(clips)))
    assert body["identified"] == len(queries) and body["failed"] == 2
    for speaker_id, clip, item in zip(ids, clips, body["items"]):
        alone = harness.upload(clip, "/v1/identify", "identify", top_k="2").get_json()
        result = item["result"]
        assert result["speaker"] == alone["speaker"] and result["speaker"]["id"] == speaker_id
        assert [c["id"] for c in result["candidates"]] == [c["id"] for c in alone["candidates"]]
        assert result["score"] == pytest.approx(alone["score"], abs=1e-3)  # batched vs single embedding
        assert result["operating_point"] == alone["operating_point"] and len(result["candidates"]) == 2
    garbage, silence = body["items"][-2:]
    assert "result" not in garbage and garbage["error"]["status"] in (400, 415, 422)
    assert silence["error"]["code"] == "not_enough_speech" and silence["error"]["status"] == 422


def test_the_batch_audio_budget_refuses_clips_past_it_item_by_item(enrolled):
    harness, ids, queries = enrolled
    budget = harness.services.settings.max_audio_seconds
    long_clip = _wav(np.tile(queries[0], int(np.ceil(0.6 * budget * 16000 / len(queries[0]))))[:int(0.6 * budget * 16000)])
    response = _batch(harness, [long_clip, long_clip, _wav(queries[1])])
    assert response.status_code == 200, response.get_json()
    first, second, third = response.get_json()["items"]
    assert first["result"]["speaker"]["id"] == ids[0]
    assert second["error"]["code"] == "batch_audio_budget" and second["error"]["status"] == 413
    assert third["result"]["speaker"]["id"] == ids[1]  # it still fits in what is left


def test_bad_batches_are_refused_whole(enrolled):
    harness, ids, queries = enrolled
    too_many = _batch(harness, [b"x"] * 65)
    assert too_many.status_code == 400 and too_many.get_json()["detail"]["field"] == "audio"
    unknown = _batch(harness, [_wav(queries[0])], candidates=str(10 ** 6))
    assert unknown.status_code == 404
    none = harness.client.post("/v1/identify/batch", data={"top_k": "2"}, headers=harness.headers("identify"),
                               content_type="multipart/form-data")
    assert none.status_code == 400 and none.get_json()["code"] == "invalid_fields"
