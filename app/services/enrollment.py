"""Enrollment: accepted quickly by the web process, embedded by a worker.

The enrollment row and its job are committed in one transaction, so an accepted
enrollment always has a job, and the job survives any crash of the worker running it.
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import uuid

import soundfile as sf
import sqlalchemy as sa

from jobqueue import PermanentJobError

from app.errors import not_found
from app.store.job_queue import jobs
from app.store import embeddings, models, profiles
from app.services import gallery_calibration, registry
from app.store.db import select_for_update
from app.store.models import utcnow
from app.services.audio_input import SAMPLE_RATE, prepare_audio

log = logging.getLogger(__name__)
ENROLL_JOB = "enroll"


def submit_enrollment(services, speaker_id: int, data: bytes, *, created_by_key_id: int | None = None):
    """Validate the audio now (clear 4xx errors), store it, queue the heavy embedding.
    The caller has found the speaker (a 404 before the upload is read); one deleted since
    is a 404 too. ``created_by_key_id``: the API key asking, the one (with admin keys) that
    may read the job."""
    settings = services.settings
    prepared = prepare_audio(services, data, min_speech_s=settings.min_enroll_speech_seconds)
    # Store the decoded 16 kHz mono signal (lossless FLAC): what the models consume,
    # and what a model upgrade re-embeds later.
    folder = settings.audio_dir / str(speaker_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.flac"
    sf.write(path, prepared.wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    try:
        with services.session() as session:
            enrollment = models.Enrollment(
                speaker_id=speaker_id, status="queued", audio_path=str(path),
                audio_sha256=hashlib.sha256(data).hexdigest(), audio_bytes=len(data),
                duration_s=prepared.duration_s, speech_s=prepared.speech_s,
                source_format=prepared.source_format)
            session.add(enrollment)
            try:
                session.flush()
            except sa.exc.IntegrityError as exc:
                # the row's one foreign key: the speaker was deleted while its audio was prepared
                raise not_found("speaker", speaker_id) from exc
            job = jobs.enqueue(session, ENROLL_JOB, job_subject(enrollment), max_attempts=settings.job_max_attempts,
                               created_by_key_id=created_by_key_id)
            session.commit()
            return enrollment, job
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def job_subject(enrollment: models.Enrollment) -> dict:
    """How a job names its enrollment. The id finds the row; the uuid and the audio
    checksum make sure it is still the same enrollment (ids are never reused since
    migration 0003, but a job must never write one person's voice onto another's row)."""
    return {"enrollment_id": enrollment.id, "enrollment_uuid": enrollment.uuid,
            "audio_sha256": enrollment.audio_sha256}


def is_job_subject(enrollment: models.Enrollment | None, subject: dict) -> bool:
    """Is this row the enrollment `subject` (see job_subject) names? Jobs queued before
    migration 0003 carry only the id, which then has to do."""
    return (enrollment is not None
            and subject.get("enrollment_uuid", enrollment.uuid) == enrollment.uuid
            and subject.get("audio_sha256", enrollment.audio_sha256) == enrollment.audio_sha256)


def find_job_subject(session, subject: dict, *, lock: bool = False) -> models.Enrollment | None:
    """The enrollment a job was created for, or None when it is gone or replaced. With
    ``lock`` it stays so until the transaction ends (a concurrent delete waits)."""
    statement = sa.select(models.Enrollment).where(models.Enrollment.id == subject["enrollment_id"])
    result = select_for_update(session, statement) if lock else session.execute(statement)
    enrollment = result.scalar_one_or_none()
    return enrollment if is_job_subject(enrollment, subject) else None


def process_enrollment(services, ctx) -> dict:
    """Job handler: embed one enrollment with every live model version (the enrollment
    model in force, the runtime model for the fused score, and any model registered for
    an upgrade in preparation), store the vectors and refresh the speaker's profiles."""
    enrollment_id = ctx.payload["enrollment_id"]
    with services.session() as session:
        enrollment = find_job_subject(session, ctx.payload, lock=True)
        if enrollment is None:  # deleted with its speaker after the job was queued
            return {"skipped": "enrollment no longer exists"}
        if enrollment.status == "done":
            return {"skipped": "already done"}
        subject = job_subject(enrollment)  # the audio embedded below: checked again before storing
        audio_path = enrollment.audio_path
        enrollment.status = "processing"
        session.commit()
    if not audio_path or not pathlib.Path(audio_path).exists():
        raise PermanentJobError(f"stored audio for enrollment {enrollment_id} is missing")
    wav, sr = sf.read(audio_path, dtype="float32")
    assert sr == SAMPLE_RATE
    speech, _ = services.vad.speech_only(wav)
    ctx.set_progress(0.1)
    with services.session() as session:
        versions = registry.live_model_versions(session)
    vectors = {}
    for i, version in enumerate(versions):
        vectors[version] = services.embedder(version).embed([speech])[0]
        ctx.set_progress(0.1 + 0.8 * (i + 1) / len(versions))
    with services.session() as session:
        # checked again, and held until commit: the speaker may have been deleted while
        # we embedded, and these vectors belong to this enrollment and no other
        enrollment = find_job_subject(session, subject, lock=True)
        if enrollment is None:
            return {"skipped": "enrollment deleted while embedding"}
        # a model retired while we embedded gets no new vectors
        retired = set(session.scalars(sa.select(models.ModelVersion.name).where(
            models.ModelVersion.name.in_(list(vectors)), models.ModelVersion.state == "retired")))
        vectors = {v: x for v, x in vectors.items() if v not in retired}
        for version in vectors:
            registry.ensure_model(session, version)
        # Re-running after a crash replaces what a previous attempt may have stored.
        embeddings.replace_for_enrollment(session, enrollment_id, enrollment.speaker_id, vectors)
        enrollment.status = "done"
        enrollment.completed_at = utcnow()
        enrollment.error = None
        session.flush()
        for version in vectors:
            profiles.refresh(session, enrollment.speaker_id, space=version)
        if not services.settings.retain_enrollment_audio:
            enrollment.audio_path = None
        session.commit()
    if not services.settings.retain_enrollment_audio:
        pathlib.Path(audio_path).unlink(missing_ok=True)
    gallery_calibration.schedule_if_due(services)  # the gallery grew: its calibration may be due
    return {"enrollment_id": enrollment_id, "spaces": sorted(vectors)}


def fail_enrollment_in(session, enrollment_id: int, error: str) -> None:
    """Mark an unfinished enrollment failed within the caller's transaction."""
    session.execute(sa.update(models.Enrollment)
                    .where(models.Enrollment.id == enrollment_id, models.Enrollment.status != "done")
                    .values(status="failed", error=error))


def mark_enrollment_failed(services, enrollment_id: int, error: str) -> None:
    with services.session() as session:
        fail_enrollment_in(session, enrollment_id, error)
        session.commit()
