"""Embeddings: one enrollment's vector in one space, the rows profiles are averaged from.
The SQL every service shares about them lives here."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import sqlalchemy as sa

from app.store import models
from app.store.db import FloatVector


def add(session, *, enrollment_id: int, speaker_id: int, space: str, vector: np.ndarray,
        produced_by: str | None = None, via_alignment: str | None = None) -> None:
    """Store one vector; `produced_by` is the model that embedded it (the space's own model
    unless it was bridged through `via_alignment`)."""
    session.add(models.Embedding(enrollment_id=enrollment_id, speaker_id=speaker_id,
                                 model_version=produced_by or space, space=space, dim=int(vector.shape[0]),
                                 vector=FloatVector.to_bytes(vector), via_alignment=via_alignment))


def replace_for_enrollment(session, enrollment_id: int, speaker_id: int, vectors: dict[str, np.ndarray]) -> None:
    """The enrollment's vectors, one per space, instead of whatever an earlier attempt stored."""
    session.execute(sa.delete(models.Embedding).filter_by(enrollment_id=enrollment_id))
    for space, vector in vectors.items():
        add(session, enrollment_id=enrollment_id, speaker_id=speaker_id, space=space, vector=vector)


def completed_for_speaker(session, speaker_id: int, space: str) -> list[tuple[np.ndarray, str | None]]:
    """(vector, bridging alignment) of each of the speaker's completed enrollments in `space`."""
    rows = session.execute(
        sa.select(models.Embedding.dim, models.Embedding.vector, models.Embedding.via_alignment)
        .join(models.Enrollment, models.Enrollment.id == models.Embedding.enrollment_id)
        .where(models.Embedding.speaker_id == speaker_id, models.Embedding.space == space,
               models.Enrollment.status == "done")).all()
    return [(FloatVector.from_bytes(vector, dim), via) for dim, vector, via in rows]


def enrollments_with_vector(session, space: str, enrollment_ids: Iterable[int]) -> set[int]:
    """Which of these enrollments already have a vector in `space`."""
    return set(session.scalars(sa.select(models.Embedding.enrollment_id).where(
        models.Embedding.space == space, models.Embedding.enrollment_id.in_(list(enrollment_ids)))))


def completed_enrollments_without_vector(session, space: str) -> list[models.Enrollment]:
    """Completed enrollments with no vector in `space` yet, by id."""
    have = sa.select(models.Embedding.enrollment_id).where(models.Embedding.space == space)
    return list(session.scalars(sa.select(models.Enrollment).where(
        models.Enrollment.status == "done", models.Enrollment.id.not_in(have)).order_by(models.Enrollment.id)))


def vectors_by_enrollment(session, space: str, enrollment_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """These enrollments' vectors in `space`, by enrollment id."""
    return {row.enrollment_id: FloatVector.from_bytes(row.vector, row.dim) for row in session.execute(
        sa.select(models.Embedding.enrollment_id, models.Embedding.dim, models.Embedding.vector)
        .where(models.Embedding.enrollment_id.in_(list(enrollment_ids)), models.Embedding.space == space))}


def vectors_by_enrollment_and_model(session, model_versions: Iterable[str]) -> dict[tuple[int, str], np.ndarray]:
    """Every vector these models produced, by (enrollment id, model version)."""
    return {(row.enrollment_id, row.model_version): FloatVector.from_bytes(row.vector, row.dim)
            for row in session.execute(
                sa.select(models.Embedding.enrollment_id, models.Embedding.model_version, models.Embedding.dim,
                          models.Embedding.vector)
                .where(models.Embedding.model_version.in_(list(model_versions))))}


def delete_for_speaker(session, speaker_id: int) -> set[str]:
    """Delete the speaker's embeddings; returns the spaces they were in."""
    spaces = set(session.scalars(sa.select(models.Embedding.space).filter_by(speaker_id=speaker_id)))
    session.execute(sa.delete(models.Embedding).filter_by(speaker_id=speaker_id))
    return spaces


def delete_space(session, space: str) -> None:
    session.execute(sa.delete(models.Embedding).filter_by(space=space))


def enrollment_vectors(session, space: str) -> list[tuple[int, int, np.ndarray, float | None, bool]]:
    """(enrollment id, speaker id, vector, speech seconds, bridged) of every completed
    enrollment's vector in `space`, by enrollment id: the gallery's own trials."""
    rows = session.execute(
        sa.select(models.Embedding.enrollment_id, models.Embedding.speaker_id, models.Embedding.dim,
                  models.Embedding.vector, models.Enrollment.speech_s, models.Embedding.via_alignment)
        .join(models.Enrollment, models.Enrollment.id == models.Embedding.enrollment_id)
        .where(models.Embedding.space == space, models.Enrollment.status == "done")
        .order_by(models.Embedding.enrollment_id)).all()
    return [(row.enrollment_id, row.speaker_id, FloatVector.from_bytes(row.vector, row.dim), row.speech_s,
             row.via_alignment is not None) for row in rows]
