"""Voice profiles: per speaker and embedding space, the L2-normalised mean of the speaker's
completed enrollments' embeddings. Every change to a profile is logged in
`gallery_changes` in the same transaction, so the in-memory profile index of every process
can follow. The SQL every service shares about them lives here."""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import sqlalchemy as sa

from app.store import embeddings, models
from app.store.db import FloatVector
from app.store.models import utcnow
from speechcore.embedder import l2_normalise


@dataclasses.dataclass(frozen=True)
class StoredProfile:
    speaker_id: int
    vector: np.ndarray
    #: some of its embeddings were bridged from an older space (their audio was not retained)
    bridged: bool


# -- reading --------------------------------------------------------------------------------
def read(session, space: str, speaker_ids: Iterable[int] | None = None) -> list[StoredProfile]:
    """The profiles in `space` (only those of `speaker_ids`, when given), by speaker id."""
    query = (sa.select(models.Profile.speaker_id, models.Profile.dim, models.Profile.vector, models.Profile.n_bridged)
             .where(models.Profile.space == space))
    if speaker_ids is not None:
        query = query.where(models.Profile.speaker_id.in_(list(speaker_ids)))
    return [_stored(row) for row in session.execute(query.order_by(models.Profile.speaker_id))]


def read_all(session) -> dict[str, list[StoredProfile]]:
    """Every profile, by space."""
    by_space: dict[str, list[StoredProfile]] = {}
    for row in session.execute(sa.select(models.Profile.space, models.Profile.speaker_id, models.Profile.dim,
                                         models.Profile.vector, models.Profile.n_bridged)):
        by_space.setdefault(row.space, []).append(_stored(row))
    return by_space


def _stored(row) -> StoredProfile:
    return StoredProfile(row.speaker_id, FloatVector.from_bytes(row.vector, row.dim), bool(row.n_bridged))


def dim_of_space(session, space: str) -> int | None:
    """The dimension of the profiles stored in `space`; None when it holds none."""
    return session.scalar(sa.select(models.Profile.dim).where(models.Profile.space == space).limit(1))


def for_speaker(session, speaker_id: int) -> list[models.Profile]:
    return list(session.scalars(sa.select(models.Profile).filter_by(speaker_id=speaker_id)))


def speaker_ids(session, space: str) -> set[int]:
    """The speakers with a profile in `space`."""
    return set(session.scalars(sa.select(models.Profile.speaker_id).filter_by(space=space)))


def count(session, space: str) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(models.Profile).where(models.Profile.space == space))


def counts_by_space(session) -> tuple[dict[str, int], dict[str, int]]:
    """(profiles per space, profiles holding bridged embeddings per space)."""
    counts = dict(session.execute(sa.select(models.Profile.space, sa.func.count()).group_by(models.Profile.space)).all())
    bridged = dict(session.execute(sa.select(models.Profile.space, sa.func.count())
                                   .where(models.Profile.n_bridged > 0).group_by(models.Profile.space)).all())
    return counts, bridged


# -- writing --------------------------------------------------------------------------------
def refresh(session, speaker_id: int, *, space: str) -> None:
    """Recompute the speaker's profile in `space` (the space is named after the model that
    defines it) from its completed enrollments' embeddings; none left deletes it."""
    stored = embeddings.completed_for_speaker(session, speaker_id, space)
    profile = session.scalar(sa.select(models.Profile).filter_by(speaker_id=speaker_id, space=space))
    if not stored:
        if profile is not None:
            session.delete(profile)
    else:
        mean = l2_normalise(np.mean([vector for vector, _ in stored], axis=0))
        if profile is None:
            profile = models.Profile(speaker_id=speaker_id, space=space)
            session.add(profile)
        profile.model_version = space
        profile.dim = int(mean.shape[0])
        profile.vector = FloatVector.to_bytes(mean)
        profile.n_embeddings = len(stored)
        profile.n_bridged = sum(1 for _, via in stored if via)
        profile.updated_at = utcnow()
    log_change(session, space, speaker_id, "upsert" if stored else "delete")


def delete_speaker_vectors(session, speaker_id: int) -> set[str]:
    """Delete the speaker's embeddings and profiles; returns the spaces that held them (the
    caller logs their deletion once the speaker's own row is gone)."""
    spaces = set(session.scalars(sa.select(models.Profile.space).filter_by(speaker_id=speaker_id)))
    spaces |= embeddings.delete_for_speaker(session, speaker_id)
    session.execute(sa.delete(models.Profile).filter_by(speaker_id=speaker_id))
    return spaces


def delete_space(session, space: str) -> int:
    """Delete every profile and embedding in `space` (and log it); returns how many profiles."""
    speakers = speaker_ids(session, space)
    session.execute(sa.delete(models.Profile).filter_by(space=space))
    embeddings.delete_space(session, space)
    for speaker_id in sorted(speakers):
        log_change(session, space, speaker_id, "delete")
    return len(speakers)


# -- the change log -------------------------------------------------------------------------
def log_change(session, space: str, speaker_id: int, op: str) -> None:
    session.add(models.GalleryChange(space=space, speaker_id=speaker_id, op=op))


def newest_change_id(session) -> int:
    return session.scalar(sa.select(sa.func.max(models.GalleryChange.id))) or 0


def oldest_change_id(session) -> int | None:
    return session.scalar(sa.select(sa.func.min(models.GalleryChange.id)))


def changes_after(session, change_id: int) -> list:
    """(id, space, speaker_id) of every logged change with a higher id, in id order."""
    return session.execute(
        sa.select(models.GalleryChange.id, models.GalleryChange.space, models.GalleryChange.speaker_id)
        .where(models.GalleryChange.id > change_id).order_by(models.GalleryChange.id)).all()
