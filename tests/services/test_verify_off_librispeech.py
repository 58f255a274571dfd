"""Issue #12's acceptance check, through the REST API on speech that is not LibriSpeech: a
gallery of 10 Speech Commands speakers (test half of the eval-shift split, never used to
choose a method), each enrolled from 8 concatenated 1-s words, verified with claims of 3
other words: impostor claims from the gallery's other speakers must be accepted at most 2%
of the time at the default threshold, genuine claims refused at most 10%; with the shipped
calibration and with the one the service refits on the gallery's own enrollments."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from nessa.lab.evaluation.shift_protocol import split_halves
from tests.conftest import ServiceHarness, fresh_database, make_settings, requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]
GALLERY, PROFILE_WORDS, CLAIM_WORDS, CLAIMS_PER_SPEAKER = 10, 8, 3, 2


def _concatenated(paths) -> bytes:
    signal = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in paths])
    buffer = io.BytesIO()
    sf.write(buffer, signal, 16000, format="FLAC")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gallery_words():
    root = requires_shared_data("speech-commands")
    clips = {d.name: sorted(d.glob("*.flac")) for d in root.iterdir() if d.is_dir()}
    needed = PROFILE_WORDS + CLAIM_WORDS * CLAIMS_PER_SPEAKER
    halves = split_halves(sorted(clips), "speech-commands")
    eligible = sorted(s for s, files in clips.items() if halves[s] == "test" and len(files) >= needed)
    assert len(eligible) >= GALLERY
    speakers = eligible[:GALLERY]
    # the profile's words and the claims' words are different recordings (mostly other words)
    return {s: (clips[s][:PROFILE_WORDS],
                [clips[s][PROFILE_WORDS + k * CLAIM_WORDS: PROFILE_WORDS + (k + 1) * CLAIM_WORDS]
                 for k in range(CLAIMS_PER_SPEAKER)]) for s in speakers}


@pytest.fixture(scope="module", params=["shipped", "gallery"])
def enrolled(request, gallery_words, tmp_path_factory, test_database_kind):
    tmp = tmp_path_factory.mktemp("speech-commands")
    with fresh_database(test_database_kind, tmp) as url:
        harness = ServiceHarness(make_settings(tmp, url, gallery_calibration=request.param == "gallery"))
        ids = {}
        for speaker, (profile, _) in gallery_words.items():
            ids[speaker] = harness.create_speaker(f"sc {speaker}", external_id=speaker)
            response = harness.upload(_concatenated(profile), f"/v1/speakers/{ids[speaker]}/enrollments", "enroll")
            assert response.status_code == 202, response.get_json()
        # the gallery calibration is refitted by a job queued when enrollments complete
        assert harness.drain_jobs() == len(ids) + (request.param == "gallery")
        yield harness, ids, request.param
        harness.close()


def test_the_calibration_in_force_says_where_it_came_from(enrolled):
    harness, ids, calibration = enrolled
    response = harness.client.get("/v1/models", headers=harness.headers("admin"))
    assert response.status_code == 200, response.get_json()
    in_force = response.get_json()["calibration"]
    assert in_force["source"] == calibration
    assert in_force["gallery_calibration"] is (calibration == "gallery")
    if calibration == "shipped":
        assert in_force["gallery_fit"] is None
        return
    fit = in_force["gallery_fit"]
    assert fit["source"] == "gallery" and fit["n_profiles"] == len(ids) and fit["n_enrollments"] == len(ids)
    # one enrollment per speaker: impostor trials only (each enrollment against the 9 others)
    for path in ("fused", "alignment"):
        assert fit["paths"][path]["n_nontargets"] == len(ids) * (len(ids) - 1)
        assert fit["paths"][path]["n_targets"] == 0
    from app.store import models

    with harness.services.session() as session:  # the fit is in the registry's event log
        event = session.query(models.RegistryEvent).filter_by(action="calibrate").one()
        assert event.details["fit_id"] == fit["fit_id"]
        assert event.details["trials"]["fused"]["nontargets"] == len(ids) * (len(ids) - 1)


def _claims(harness, ids, gallery_words, calibration: str) -> list[tuple[bool, dict]]:
    """(genuine?, verify response) for every claim: each speaker's claim audio against every profile."""
    out = []
    for speaker, (_, claims) in gallery_words.items():
        for words in claims:
            audio = _concatenated(words)
            for claimed in ids:
                response = harness.upload(audio, "/v1/verify", "identify", speaker_id=str(ids[claimed]))
                assert response.status_code == 200, response.get_json()
                body = response.get_json()
                assert body["operating_point"]["calibration"] == calibration
                out.append((claimed == speaker, body))
    return out


def _rates(claims) -> tuple[int, int, int, int]:
    impostor = [body["accepted"] for genuine, body in claims if not genuine]
    genuine = [body["accepted"] for is_genuine, body in claims if is_genuine]
    return sum(impostor), len(impostor), len(genuine) - sum(genuine), len(genuine)


def test_verify_keeps_its_false_accept_promise_on_speech_commands(enrolled, gallery_words):
    """The default service (shipped calibration, suspect check on) meets the issue's bars; the
    gallery's own calibration keeps the false-accept bar and only ever makes decisions stricter
    (what it costs in false rejects is printed: docs/calibration.md)."""
    harness, ids, calibration = enrolled
    claims = _claims(harness, ids, gallery_words, calibration)
    false_accepts, impostors, false_rejects, genuines = _rates(claims)
    print(f"\nSpeech Commands gallery of {len(ids)}, {calibration} calibration: false accepts "
          f"{false_accepts}/{impostors}, false rejects {false_rejects}/{genuines} at the default threshold")
    assert impostors == GALLERY * CLAIMS_PER_SPEAKER * (GALLERY - 1)
    assert false_accepts <= 0.02 * impostors
    if calibration == "shipped":
        assert false_rejects <= 0.10 * genuines
        return
    harness.services.calibrations.enabled = False  # the same claims, decided with the shipped calibration
    try:
        shipped = _claims(harness, ids, gallery_words, "shipped")
    finally:
        harness.services.calibrations.enabled = True
    for (_, fitted), (_, before) in zip(claims, shipped):
        assert fitted["score"] <= before["score"] + 1e-6
        assert before["accepted"] or not fitted["accepted"]
