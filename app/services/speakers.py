"""Speakers and their stored data."""
from __future__ import annotations

import pathlib

import sqlalchemy as sa

from app.store import db, models, profiles
from app.errors import ApiError, not_found

#: the tables that hold a speaker's personal data (vectors, name, audio references)
SPEAKER_TABLES = ("embeddings", "profiles", "enrollments", "speakers")


def speaker_to_dict(session, speaker: models.Speaker) -> dict:
    enrollments = session.scalars(
        sa.select(models.Enrollment).filter_by(speaker_id=speaker.id).order_by(models.Enrollment.id)).all()
    speaker_profiles = profiles.for_speaker(session, speaker.id)
    return {
        "id": speaker.id, "name": speaker.name, "external_id": speaker.external_id,
        "created_at": speaker.created_at.isoformat(),
        "enrollments": [enrollment_to_dict(e) for e in enrollments],
        "profiles": [{"space": p.space, "model_version": p.model_version, "n_embeddings": p.n_embeddings,
                      "n_bridged": p.n_bridged, "updated_at": p.updated_at.isoformat()} for p in speaker_profiles],
        "enrolled": any(p.space for p in speaker_profiles),
    }


def enrollment_to_dict(e: models.Enrollment) -> dict:
    return {"id": e.id, "speaker_id": e.speaker_id, "status": e.status, "audio_sha256": e.audio_sha256,
            "duration_s": e.duration_s, "speech_s": e.speech_s, "audio_retained": e.audio_path is not None,
            "error": e.error, "created_at": e.created_at.isoformat(),
            "completed_at": e.completed_at.isoformat() if e.completed_at else None}


def create_speaker(session, *, name: str, external_id: str | None) -> models.Speaker:
    if external_id is not None:
        clash = session.scalar(sa.select(models.Speaker.id).filter_by(external_id=external_id))
        if clash is not None:
            raise ApiError(409, "external_id_taken", "Another speaker already has this external_id.",
                           {"external_id": external_id, "speaker_id": clash})
    speaker = models.Speaker(name=name, external_id=external_id)
    session.add(speaker)
    session.flush()
    return speaker


def get_speaker(session, speaker_id: int) -> models.Speaker:
    speaker = session.get(models.Speaker, speaker_id)
    if speaker is None:
        raise not_found("speaker", speaker_id)
    return speaker


def list_speakers(session, *, limit: int, offset: int) -> tuple[int, list[models.Speaker]]:
    """(how many speakers there are, one page of them in id order)."""
    total = session.scalar(sa.select(sa.func.count(models.Speaker.id)))
    rows = session.scalars(sa.select(models.Speaker).order_by(models.Speaker.id).limit(limit).offset(offset)).all()
    return total, list(rows)


def refuse_unknown_speakers(session, speaker_ids: list[int]) -> None:
    """404 naming every id in `speaker_ids` that is no speaker."""
    known = set(session.scalars(sa.select(models.Speaker.id).where(models.Speaker.id.in_(speaker_ids))))
    missing = sorted(set(speaker_ids) - known)
    if missing:
        raise ApiError(404, "speaker_not_found", "Unknown speaker ids in 'candidates'.", {"ids": missing})


def speaker_names(session, speaker_ids: list[int]) -> dict[int, str]:
    """The names of those of `speaker_ids` that are speakers."""
    return dict(session.execute(
        sa.select(models.Speaker.id, models.Speaker.name).where(models.Speaker.id.in_(speaker_ids))).all())


def delete_speaker(session, speaker_id: int) -> list[pathlib.Path]:
    """Delete the speaker and everything derived from it; returns audio files to remove
    once the transaction has committed (so a failed commit loses nothing)."""
    speaker = get_speaker(session, speaker_id)
    # The speaker's enrollments first, in the order an enrollment job's final write takes
    # its rows (enrollment, then embeddings and profiles): a job storing vectors finishes
    # before this delete reads anything, instead of deadlocking with it on PostgreSQL.
    db.select_for_update(session, sa.select(models.Enrollment.id).filter_by(speaker_id=speaker_id))
    files = [pathlib.Path(p) for p in session.scalars(
        sa.select(models.Enrollment.audio_path).filter_by(speaker_id=speaker_id)) if p]
    # Explicit deletes (not only ON DELETE CASCADE) so both databases behave the same.
    spaces = profiles.delete_speaker_vectors(session, speaker_id)
    session.execute(sa.delete(models.Enrollment).filter_by(speaker_id=speaker_id))
    session.delete(speaker)
    for space in sorted(spaces):
        profiles.log_change(session, space, speaker_id, "delete")
    return files


def scrub_deleted_speakers(engine) -> None:
    """After a committed delete: leave no copy of the rows in the database's files
    (db.scrub_deleted_rows; docs/erasure.md)."""
    db.scrub_deleted_rows(engine, SPEAKER_TABLES)


def remove_files(paths: list[pathlib.Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        parent = path.parent
        try:
            parent.rmdir()  # the speaker's folder, once empty
        except OSError:
            pass
