"""Erasure and retention: a deleted speaker's vectors leave the database files, audio
that no row owns is swept, failed jobs give up their audio, finished jobs and old
change-log rows are pruned without the in-memory indexes missing a change."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import pathlib
import time

import numpy as np
import pytest
import sqlalchemy as sa

from app.store import db, models, profiles
from app.store.job_queue import jobs
from app.services import retention
from app.services.enrollment import ENROLL_JOB
from app.services.profile_index import ProfileIndex

ENROLL_SPACE, ENROLL_DIM = "campplus-192", 192
RUNTIME_SPACE, RUNTIME_DIM = "ge2e-256", 256
LONG_AGO = models.utcnow() - dt.timedelta(days=30)


def _random_unit(rng, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _add_enrollment(session, speaker_id: int, *, audio_path: str | None = None, status: str = "done",
                    vectors: dict | None = None) -> models.Enrollment:
    """An enrollment row (and its embeddings) written as the service writes them."""
    enrollment = models.Enrollment(speaker_id=speaker_id, status=status, audio_path=audio_path,
                                   audio_sha256=hashlib.sha256(os.urandom(8)).hexdigest(), audio_bytes=1000,
                                   duration_s=5.0, speech_s=4.0)
    session.add(enrollment)
    session.flush()
    for space, vector in (vectors or {}).items():
        session.add(models.Embedding(enrollment_id=enrollment.id, speaker_id=speaker_id, model_version=space,
                                     space=space, dim=len(vector), vector=db.FloatVector.to_bytes(vector)))
    session.flush()
    return enrollment


def _enroll_random_speaker(harness, name: str, rng, n_enrollments: int = 3) -> tuple[int, list[bytes]]:
    """A speaker with embeddings of known random vectors and its profiles; returns its id
    and the exact bytes of every vector stored for it."""
    speaker_id = harness.create_speaker(name)
    with harness.services.session() as session:
        for _ in range(n_enrollments):
            _add_enrollment(session, speaker_id, vectors={ENROLL_SPACE: _random_unit(rng, ENROLL_DIM),
                                                          RUNTIME_SPACE: _random_unit(rng, RUNTIME_DIM)})
        for space in (ENROLL_SPACE, RUNTIME_SPACE):
            profiles.refresh(session, speaker_id, space=space)
        session.commit()
        blobs = list(session.scalars(sa.select(models.Embedding.vector).filter_by(speaker_id=speaker_id)))
        blobs += list(session.scalars(sa.select(models.Profile.vector).filter_by(speaker_id=speaker_id)))
    assert len(blobs) == 2 * n_enrollments + 2
    return speaker_id, blobs


def _sqlite_files(harness) -> list[pathlib.Path]:
    database = pathlib.Path(sa.make_url(harness.settings.resolved_database_url).database)
    return [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]


def _found_in(files: list[pathlib.Path], blobs: list[bytes]) -> list[str]:
    contents = {path.name: path.read_bytes() for path in files if path.exists()}
    return [f"vector {i} in {name}" for i, blob in enumerate(blobs) for name, data in contents.items()
            if blob in data]


def test_a_deleted_speakers_vectors_are_not_in_the_database_files(harness, test_database_kind):
    rng = np.random.default_rng(7)
    kept_id, kept_blobs = _enroll_random_speaker(harness, "Kept", rng)
    erased_id, erased_blobs = _enroll_random_speaker(harness, "Erased", rng)
    vacuums_before = _vacuum_count(harness, "embeddings")
    if test_database_kind == "sqlite":
        assert len(_found_in(_sqlite_files(harness), erased_blobs)) >= len(erased_blobs)  # the check can see them

    response = harness.client.delete(f"/v1/speakers/{erased_id}", headers=harness.headers("enroll"))
    assert response.status_code == 204

    if test_database_kind == "sqlite":
        assert _found_in(_sqlite_files(harness), erased_blobs) == []
        assert len(_found_in(_sqlite_files(harness), kept_blobs)) >= len(kept_blobs)
    else:
        # the data files are the server's; what the service can do is VACUUM after the delete
        assert _vacuum_count(harness, "embeddings") > vacuums_before
    with harness.services.session() as session:
        assert session.get(models.Speaker, kept_id) is not None
        assert session.scalar(sa.select(sa.func.count()).select_from(models.Embedding)
                              .filter_by(speaker_id=erased_id)) == 0


def _vacuum_count(harness, table: str) -> int | None:
    if harness.services.engine.dialect.name != "postgresql":
        return None
    with harness.services.session() as session:
        session.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return session.scalar(sa.text("SELECT vacuum_count FROM pg_stat_user_tables "
                                      "WHERE relname = :t AND schemaname = current_schema()"), {"t": table})


def test_sqlite_connections_zero_deleted_content(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    engine.dispose()


# -- orphaned audio -----------------------------------------------------------------------
def _audio_file(path: pathlib.Path, *, age_s: float) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"fLaC" + os.urandom(64))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_audio_that_no_row_owns_is_swept_once_past_the_grace_period(harness):
    settings, hour = harness.settings, 3600.0
    speaker_id = harness.create_speaker("Has audio")
    deleted_id = harness.create_speaker("Deleted while a file was being removed")
    speaker_dir = settings.audio_dir / str(speaker_id)
    owned = _audio_file(speaker_dir / "owned.flac", age_s=5 * hour)
    orphan = _audio_file(speaker_dir / "orphan.flac", age_s=5 * hour)
    in_flight = _audio_file(speaker_dir / "upload-not-committed-yet.flac", age_s=60)
    deleted_speakers_file = _audio_file(settings.audio_dir / str(deleted_id) / "left.flac", age_s=5 * hour)
    queued_diarization = _audio_file(settings.diarize_audio_dir / "queued.flac", age_s=5 * hour)
    finished_diarization = _audio_file(settings.diarize_audio_dir / "finished.flac", age_s=5 * hour)
    unknown = _audio_file(settings.audio_dir / "not-ours" / "x.flac", age_s=5 * hour)
    with harness.services.session() as session:
        _add_enrollment(session, speaker_id, audio_path=str(owned))
        jobs.enqueue(session, "diarize", {"audio_path": str(queued_diarization), "options": {}})
        done = jobs.enqueue(session, "diarize", {"audio_path": str(finished_diarization), "options": {}})
        done.status = "failed"
        session.delete(session.get(models.Speaker, deleted_id))
        session.commit()

    assert retention.remove_orphan_audio(harness.services, grace_seconds=hour) == 3
    assert owned.exists() and in_flight.exists() and queued_diarization.exists() and unknown.exists()
    assert not orphan.exists() and not finished_diarization.exists() and not deleted_speakers_file.exists()
    assert not deleted_speakers_file.parent.exists()  # a deleted speaker's folder goes too
    assert speaker_dir.exists()


def test_a_worker_sweeps_at_start(harness):
    from app.worker import build_worker

    orphan = _audio_file(harness.settings.audio_dir / "12345" / "orphan.flac",
                         age_s=2 * retention.ORPHAN_AUDIO_GRACE_SECONDS)
    worker = build_worker(harness.services, worker_id="maintenance-test")
    worker.between_jobs()  # what run_forever does before its first claim
    assert not orphan.exists()


# -- failed jobs give up their audio ------------------------------------------------------
def _not_audio(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all")
    return path


def _make_lost(harness, job_id: int) -> None:
    """The job's workers died on every attempt: running, no attempts left, lease expired."""
    with harness.services.session() as session:
        job = session.get(models.Job, job_id)
        job.status, job.attempts, job.worker_id = "running", job.max_attempts, "dead-worker"
        job.lease_expires_at = LONG_AGO
        session.commit()


def _job_status(harness, job_id: int) -> str:
    with harness.services.session() as session:
        return session.get(models.Job, job_id).status


@pytest.mark.parametrize("outcome", ["fails", "is_lost"])
def test_a_diarization_job_that_gives_up_removes_its_audio(harness, outcome):
    audio = _not_audio(harness.settings.diarize_audio_dir / "long-recording.flac")
    with harness.services.session() as session:
        job = jobs.enqueue(session, "diarize", {"audio_path": str(audio), "options": {}}, max_attempts=1)
        session.commit()
    if outcome == "is_lost":
        _make_lost(harness, job.id)
    harness.drain_jobs()
    assert _job_status(harness, job.id) == "failed"
    assert not audio.exists()


@pytest.mark.parametrize("outcome", ["fails", "is_lost"])
def test_an_enrollment_that_fails_for_good_removes_its_audio(harness, outcome):
    speaker_id = harness.create_speaker("Unlucky")
    audio = _not_audio(harness.settings.audio_dir / str(speaker_id) / "broken.flac")
    with harness.services.session() as session:
        enrollment = _add_enrollment(session, speaker_id, audio_path=str(audio), status="queued")
        job = jobs.enqueue(session, ENROLL_JOB, {"enrollment_id": enrollment.id}, max_attempts=1)
        session.commit()
    if outcome == "is_lost":
        _make_lost(harness, job.id)
    harness.drain_jobs()
    assert _job_status(harness, job.id) == "failed"
    with harness.services.session() as session:
        row = session.get(models.Enrollment, enrollment.id)
        assert (row.status, row.audio_path) == ("failed", None)
    assert not audio.exists()


# -- pruning --------------------------------------------------------------------------------
def _job(session, name: str, status: str, *, finished_at=None, parent=None) -> models.Job:
    job = models.Job(kind="test", payload={"name": name}, status=status, parent_id=parent.id if parent else None,
                     finished_at=finished_at if status in ("succeeded", "failed") else None)
    session.add(job)
    session.flush()
    return job


def _remaining_job_names(session_factory) -> set[str]:
    with session_factory() as session:
        return {payload["name"] for payload in session.scalars(sa.select(models.Job.payload))}


def test_finished_jobs_are_pruned_after_the_retention_period(session_factory):
    recently = models.utcnow() - dt.timedelta(hours=1)
    with session_factory() as session:
        _job(session, "old succeeded", "succeeded", finished_at=LONG_AGO)
        _job(session, "old failed", "failed", finished_at=LONG_AGO)
        _job(session, "recent", "succeeded", finished_at=recently)
        _job(session, "queued", "queued")
        _job(session, "running", "running")
        waiting = _job(session, "old parent, a child unfinished", "failed", finished_at=LONG_AGO)
        _job(session, "its finished child", "succeeded", finished_at=LONG_AGO, parent=waiting)
        _job(session, "its unfinished child", "running", parent=waiting)
        running = _job(session, "running parent", "running")
        _job(session, "old child of a running parent", "succeeded", finished_at=LONG_AGO, parent=running)
        recent_parent = _job(session, "recent parent", "succeeded", finished_at=recently)
        _job(session, "old child of a recent parent", "succeeded", finished_at=LONG_AGO, parent=recent_parent)
        done = _job(session, "old parent, all done", "succeeded", finished_at=LONG_AGO)
        for i in range(5):
            _job(session, f"old child {i}", "succeeded", finished_at=LONG_AGO, parent=done)
        session.commit()

    assert retention.prune_finished_jobs(session_factory, retention_days=0) == 0
    pruned = retention.prune_finished_jobs(session_factory, retention_days=7, batch_size=2)
    assert pruned == 8  # two old ones, the done parent and its five children
    assert _remaining_job_names(session_factory) == {
        "recent", "queued", "running", "old parent, a child unfinished", "its finished child",
        "its unfinished child", "running parent", "old child of a running parent", "recent parent",
        "old child of a recent parent"}


def _change(session, speaker_id: int, op: str, *, created_at=None) -> None:
    session.add(models.GalleryChange(space=ENROLL_SPACE, speaker_id=speaker_id, op=op,
                                     created_at=created_at or models.utcnow()))


def _set_profile(session, speaker_id: int, rng) -> None:
    profile = session.scalar(sa.select(models.Profile).filter_by(speaker_id=speaker_id, space=ENROLL_SPACE))
    if profile is None:
        profile = models.Profile(speaker_id=speaker_id, space=ENROLL_SPACE, model_version=ENROLL_SPACE,
                                 dim=ENROLL_DIM, n_embeddings=1)
        session.add(profile)
    profile.vector = db.FloatVector.to_bytes(_random_unit(rng, ENROLL_DIM))


def _age_all_changes(session) -> None:
    session.execute(sa.update(models.GalleryChange).values(created_at=LONG_AGO))


def test_old_change_log_rows_are_pruned_and_an_index_that_missed_them_rebuilds(harness):
    """Process A syncs, then sleeps through the retention period while another process
    adds one speaker and deletes another; those change rows are pruned before A syncs
    again. A must still end up with exactly the gallery the profiles table holds."""
    rng = np.random.default_rng(3)
    session_factory = harness.services.session_factory
    ids = [harness.create_speaker(name) for name in ("Stays", "Deleted later", "Added later")]
    stays, deleted, added = ids
    with session_factory() as session:
        for speaker_id in (stays, deleted):
            _set_profile(session, speaker_id, rng)
            _change(session, speaker_id, "upsert")
        session.commit()
    sleeper = ProfileIndex(session_factory)
    sleeper.rebuild()
    assert set(sleeper.ids(ENROLL_SPACE)) == {stays, deleted}

    with session_factory() as session:  # another process, while A is idle
        _set_profile(session, added, rng)
        _change(session, added, "upsert")
        session.execute(sa.delete(models.Profile).filter_by(speaker_id=deleted))
        _change(session, deleted, "delete")
        _age_all_changes(session)
        _change(session, stays, "upsert")  # a recent row, kept: pruning leaves a suffix of ids
        session.commit()
    assert retention.prune_gallery_changes(session_factory, retention_days=0) == 0
    assert retention.prune_gallery_changes(session_factory, retention_days=1, batch_size=2) == 4
    with session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(models.GalleryChange)) == 1

    sleeper.sync()
    assert set(sleeper.ids(ENROLL_SPACE)) == {stays, added}


def test_an_index_that_saw_every_pruned_row_does_not_rebuild(harness, monkeypatch):
    rng = np.random.default_rng(4)
    session_factory = harness.services.session_factory
    speaker_id = harness.create_speaker("Seen")
    with session_factory() as session:
        _set_profile(session, speaker_id, rng)
        _change(session, speaker_id, "upsert")
        session.commit()
    awake = ProfileIndex(session_factory)
    awake.rebuild()
    with session_factory() as session:
        _age_all_changes(session)
        session.commit()
    retention.prune_gallery_changes(session_factory, retention_days=1)
    with session_factory() as session:
        _change(session, speaker_id, "upsert")  # the next id after the pruned ones
        session.commit()
    monkeypatch.setattr(awake, "rebuild", lambda *_: pytest.fail("rebuilt without need"))
    awake.sync()
    assert awake.ids(ENROLL_SPACE) == [speaker_id]


def test_a_maintenance_pass_applies_the_retention_settings(tmp_path, database_url):
    from tests.conftest import ServiceHarness, make_settings

    harness = ServiceHarness(make_settings(tmp_path, database_url, job_retention_days=2.0,
                                           gallery_change_retention_days=0.5))
    try:
        with harness.services.session() as session:
            _job(session, "three days old", "succeeded", finished_at=models.utcnow() - dt.timedelta(days=3))
            _job(session, "one day old", "succeeded", finished_at=models.utcnow() - dt.timedelta(days=1))
            _change(session, 1, "delete", created_at=models.utcnow() - dt.timedelta(days=1))
            _change(session, 2, "delete")
            session.commit()
        done = retention.run_maintenance(harness.services)
        assert done == {"orphan_audio_files": 0, "jobs": 1, "gallery_changes": 1}
        assert _remaining_job_names(harness.services.session_factory) == {"one day old"}
    finally:
        harness.close()
