"""Issue #10, defect 1: a deleted speaker's voiceprint must never end up on another speaker.

Public ids are never reused, and an enrollment job writes results only for the exact
enrollment (uuid and audio checksum) it was created for, checked again inside its final
write transaction, which holds the enrollment until it commits. Real models, real speech,
on SQLite and on PostgreSQL (NESSA_TEST_DATABASE)."""
from __future__ import annotations

import contextlib
import pathlib
import threading

import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa

from tests.conftest import requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]
ROUNDS = 3
WAIT_S = 300  # the first job of a run loads the models


# -- helpers -----------------------------------------------------------------------------
def _utterances(speaker: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A speaker's two longest test-other utterances: (to enroll, to verify with)."""
    files = sorted(requires_shared_data("librispeech", "test-other", speaker).glob("*.flac"),
                   key=lambda f: (-sf.info(str(f)).duration, f.name))
    return files[0], files[1]


def _speaker_pairs() -> list[tuple[str, str]]:
    """(A, B) for each round: A is deleted while its job runs, B is created after."""
    root = requires_shared_data("librispeech", "test-other")
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(speakers[2 * i], speakers[2 * i + 1]) for i in range(ROUNDS)]


def _enroll(harness, speaker_id: int, path: pathlib.Path) -> dict:
    response = harness.upload(path, f"/v1/speakers/{speaker_id}/enrollments", "enroll")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _job(harness, job_id: int) -> dict:
    response = harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers("enroll"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _verify(harness, path: pathlib.Path, speaker_id: int) -> dict:
    response = harness.upload(path, "/v1/verify", "identify", speaker_id=str(speaker_id))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _stored_vectors(harness, enrollment_id: int) -> dict[str, np.ndarray]:
    from app.store import models
    from app.store.db import FloatVector

    with harness.services.session() as session:
        rows = session.scalars(sa.select(models.Embedding).filter_by(enrollment_id=enrollment_id)).all()
        return {r.space: FloatVector.from_bytes(r.vector, r.dim) for r in rows}


def _embed_directly(harness, path: pathlib.Path, space: str) -> np.ndarray:
    """What the service's embedder makes of this file's speech, outside any job."""
    from speechcore.audio import decode_audio

    services = harness.services
    speech, _ = services.vad.speech_only(decode_audio(path.read_bytes()).wav)
    return services.embedder(space).embed([speech])[0]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _count(harness, model, **where) -> int:
    with harness.services.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**where))


class _PauseAfterEmbedding:
    """A job context that holds the handler once its embeddings are computed (process_enrollment
    reports progress 0.9 then), before its final write, until released."""

    def __init__(self, context, gate: "_Gate"):
        self._context, self._gate = context, gate

    def __getattr__(self, name):
        return getattr(self._context, name)

    def set_progress(self, fraction: float) -> None:
        self._context.set_progress(fraction)
        if fraction >= 0.9:
            self._gate.hold()


class _Gate:
    def __init__(self):
        self.reached, self.opened = threading.Event(), threading.Event()

    def hold(self) -> None:
        self.reached.set()
        assert self.opened.wait(WAIT_S), "the test never released the job"


@contextlib.contextmanager
def _held_at(gate: _Gate, target):
    """Run `target` in a thread; the body runs while the thread waits at `gate`, then it goes on."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert gate.reached.wait(WAIT_S), "the thread never reached the gate"
    try:
        yield
    finally:
        gate.opened.set()
        thread.join(WAIT_S)
    assert not thread.is_alive()


def _job_paused_after_embedding(harness):
    """A worker claims the next enrollment job; the body runs once the job has computed its
    vectors and before it stores them."""
    from jobqueue import Worker

    from app.services.enrollment import ENROLL_JOB, process_enrollment
    from app.store.job_queue import jobs

    services, gate = harness.services, _Gate()
    handler = lambda ctx: process_enrollment(services, _PauseAfterEmbedding(ctx, gate))  # noqa: E731
    worker = Worker(jobs, services.session_factory, {ENROLL_JOB: handler}, worker_id="paused-worker",
                    lease_seconds=services.settings.job_lease_seconds)
    return _held_at(gate, worker.run_once)


# -- ids ---------------------------------------------------------------------------------
def test_ids_are_never_reused_after_deleting_the_newest(harness):
    from app.store import models

    audio, _ = _utterances(_speaker_pairs()[0][0])
    first = harness.create_speaker("first")
    newest = harness.create_speaker("newest")
    submitted = _enroll(harness, newest, audio)
    assert harness.client.delete(f"/v1/speakers/{newest}", headers=harness.headers("enroll")).status_code == 204
    with harness.services.session() as session:  # jobs are deleted only by pruning
        session.execute(sa.delete(models.Job).where(models.Job.id == submitted["job"]["id"]))
        session.commit()

    again = harness.create_speaker("created after the delete")
    resubmitted = _enroll(harness, again, audio)
    assert first < newest < again
    assert resubmitted["enrollment"]["id"] > submitted["enrollment"]["id"]
    assert resubmitted["job"]["id"] > submitted["job"]["id"]


# -- the race of the issue -----------------------------------------------------------------
def test_deleting_a_speaker_while_its_job_runs_never_gives_its_voice_to_a_new_speaker(harness):
    from app.store import models

    for a_speaker, b_speaker in _speaker_pairs():
        a_audio, _ = _utterances(a_speaker)
        b_audio, b_other = _utterances(b_speaker)
        a_id = harness.create_speaker(f"A {a_speaker}")
        a = _enroll(harness, a_id, a_audio)

        with _job_paused_after_embedding(harness):  # A's vectors are computed, not yet stored
            assert harness.client.delete(f"/v1/speakers/{a_id}", headers=harness.headers("enroll")).status_code == 204
            b_id = harness.create_speaker(f"B {b_speaker}")
            b = _enroll(harness, b_id, b_audio)

        a_job = _job(harness, a["job"]["id"])
        assert a_job["status"] == "succeeded" and "skipped" in a_job["result"], a_job
        assert b_id > a_id and b["enrollment"]["id"] > a["enrollment"]["id"] and b["job"]["id"] > a["job"]["id"]
        assert harness.drain_jobs() == 1
        b_job = _job(harness, b["job"]["id"])
        assert b_job["status"] == "succeeded" and "skipped" not in b_job["result"], b_job

        stored = _stored_vectors(harness, b["enrollment"]["id"])
        assert set(stored) == set(b_job["result"]["spaces"]) and stored
        for space, vector in stored.items():
            own = _unit(_embed_directly(harness, b_audio, space))
            assert float(_unit(vector) @ own) > 0.9999, space  # B's voice, and only B's
        assert _count(harness, models.Embedding, speaker_id=a_id) == 0

        assert _verify(harness, b_other, b_id)["accepted"] is True
        assert _verify(harness, a_audio, b_id)["accepted"] is False


def test_a_job_whose_enrollment_was_replaced_while_embedding_stores_nothing(harness):
    """The id alone is not trusted: if the row under the job's id is no longer the
    enrollment it was created for (other uuid and audio), the job drops its results."""
    from app.store import models

    audio, _ = _utterances(_speaker_pairs()[0][0])
    speaker_id = harness.create_speaker("replaced")
    submitted = _enroll(harness, speaker_id, audio)
    with _job_paused_after_embedding(harness), harness.services.session() as session:
        # another enrollment under the same id, as a restored backup or a reused id would give
        session.execute(sa.update(models.Enrollment).where(models.Enrollment.id == submitted["enrollment"]["id"])
                        .values(uuid="f" * 32, audio_sha256="0" * 64))
        session.commit()

    job = _job(harness, submitted["job"]["id"])
    assert job["status"] == "succeeded" and "skipped" in job["result"], job
    assert _count(harness, models.Embedding, enrollment_id=submitted["enrollment"]["id"]) == 0
    assert _count(harness, models.Profile, speaker_id=speaker_id) == 0


def test_a_job_queued_before_enrollments_had_uuids_still_runs(harness):
    """Jobs queued before migration 0003 name their enrollment by id only."""
    from app.store import models

    audio, _ = _utterances(_speaker_pairs()[0][0])
    speaker_id = harness.create_speaker("legacy")
    submitted = _enroll(harness, speaker_id, audio)
    with harness.services.session() as session:
        job = session.get(models.Job, submitted["job"]["id"])
        assert job.payload["enrollment_uuid"] and job.payload["audio_sha256"]
        job.payload = {"enrollment_id": submitted["enrollment"]["id"]}
        session.commit()
    assert harness.drain_jobs() == 1
    job = _job(harness, submitted["job"]["id"])
    assert job["status"] == "succeeded" and "skipped" not in job["result"], job
    assert _count(harness, models.Embedding, enrollment_id=submitted["enrollment"]["id"]) == len(job["result"]["spaces"])


def test_a_delete_during_the_final_write_waits_for_it_then_removes_everything(harness, monkeypatch):
    """The final write holds the enrollment from its last check to its commit (PostgreSQL:
    a row lock; SQLite: the write lock): a delete arriving in between waits, then removes
    what the job wrote."""
    from app.store import models
    from app.services import enrollment

    first, second = _utterances(_speaker_pairs()[0][0])
    speaker_id = harness.create_speaker("deleted during the write")
    _enroll(harness, speaker_id, first)
    assert harness.drain_jobs() == 1  # a profile to update: rows the delete removes too (lock order)
    submitted = _enroll(harness, speaker_id, second)
    gate = _Gate()
    real_find, lookups = enrollment.find_job_subject, []

    def find_then_hold(session, subject, *, lock=False):
        found = real_find(session, subject, lock=lock)
        lookups.append(lock)
        if len(lookups) == 2:  # the check after embedding: found and held, nothing written yet
            gate.hold()
        return found

    monkeypatch.setattr(enrollment, "find_job_subject", find_then_hold)
    statuses = []
    deleter = threading.Thread(target=lambda: statuses.append(harness.app.test_client().delete(
        f"/v1/speakers/{speaker_id}", headers=harness.headers("enroll")).status_code), daemon=True)
    with _held_at(gate, lambda: harness.drain_jobs(max_jobs=1)):
        deleter.start()
        deleter.join(2.0)
        assert deleter.is_alive(), "the delete should wait for the job's final write"
    deleter.join(WAIT_S)

    assert statuses == [204]
    job = _job(harness, submitted["job"]["id"])
    assert (job["status"], job["attempts"], job["error"]) == ("succeeded", 1, None)  # no deadlock, no retry
    for model in (models.Embedding, models.Profile):
        assert _count(harness, model, speaker_id=speaker_id) == 0
    assert _count(harness, models.Enrollment, speaker_id=speaker_id) == 0
    harness.services.gallery.sync()
    assert not any(harness.services.gallery.contains(space, speaker_id) for space in ("campplus-192", "ge2e-256"))


# -- re-embedding jobs check the same way ------------------------------------------------------
class _BatchContext:
    """A re-embedding batch job's context; `on_progress` runs once its first vector is computed."""

    def __init__(self, payload: dict, on_progress=None):
        self.payload, self._on_progress = payload, on_progress

    def set_progress(self, fraction: float) -> None:
        if self._on_progress is not None:
            self._on_progress()
            self._on_progress = None


def _enrolled_without(harness, space: str) -> int:
    """A completed enrollment whose vector in `space` was removed, as before a re-embedding."""
    from app.store import models

    audio, _ = _utterances(_speaker_pairs()[0][0])
    submitted = _enroll(harness, harness.create_speaker("re-embedded"), audio)
    assert harness.drain_jobs() == 1
    enrollment_id = submitted["enrollment"]["id"]
    with harness.services.session() as session:
        session.execute(sa.delete(models.Embedding).filter_by(enrollment_id=enrollment_id, space=space))
        session.commit()
    return enrollment_id


def _replace_enrollment(harness, enrollment_id: int) -> None:
    from app.store import models

    with harness.services.session() as session:
        session.execute(sa.update(models.Enrollment).where(models.Enrollment.id == enrollment_id)
                        .values(uuid="e" * 32, audio_sha256="1" * 64))
        session.commit()


def test_reembedding_writes_only_for_the_enrollments_it_was_created_for(harness):
    from app.store import models
    from app.services.enrollment import job_subject
    from app.services.reembed import process_reembed_batch

    space = "ge2e-256"
    enrollment_id = _enrolled_without(harness, space)
    with harness.services.session() as session:
        subject = job_subject(session.get(models.Enrollment, enrollment_id))
    payload = {"model_version": space, "bridge": None, "enrollments": [subject]}

    # replaced while its vector was computed: nothing is stored
    counts = process_reembed_batch(harness.services, _BatchContext(
        payload, on_progress=lambda: _replace_enrollment(harness, enrollment_id)))
    assert counts["embedded"] == 1
    assert _count(harness, models.Embedding, enrollment_id=enrollment_id, space=space) == 0

    # replaced before the batch ran: not embedded at all
    counts = process_reembed_batch(harness.services, _BatchContext(payload))
    assert counts["gone"] == 1 and counts["embedded"] == 0

    # a batch queued before migration 0003 names ids only, and still runs
    legacy = {"model_version": space, "bridge": None, "enrollment_ids": [enrollment_id]}
    assert process_reembed_batch(harness.services, _BatchContext(legacy))["embedded"] == 1
    assert _count(harness, models.Embedding, enrollment_id=enrollment_id, space=space) == 1
