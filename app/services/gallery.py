"""In-memory FAISS indexes over voice profiles, one per embedding space.

The database is the truth. Each process builds its indexes from the `profiles` table at
start and then follows the `gallery_changes` log (written in the same transaction as
every profile change), so a profile committed by a worker on another host is searchable
on the next request here.
"""
from __future__ import annotations

import threading

import numpy as np
import sqlalchemy as sa

from app.store import models
from app.store.db import FloatVector
from vectorindex import VectorIndex

# Change-log ids are allocated at insert time but become visible at commit, so with
# concurrent writers a lower id can appear after a higher one. We re-read this many ids
# below the highest seen and skip those already applied.
CHANGE_LOG_OVERLAP = 256


class Gallery:
    def __init__(self, session_factory, *, factory: str = "Flat", use_gpu: bool = True):
        self._session_factory = session_factory
        self._factory = factory
        self._use_gpu = use_gpu
        self._indexes: dict[str, VectorIndex] = {}
        self._dims: dict[str, int] = {}
        self._last_change_id = 0
        self._applied_recent: set[int] = set()
        self._lock = threading.RLock()

    # -- building and syncing -------------------------------------------------------
    def rebuild(self) -> None:
        """Build every space's index from the database (process start)."""
        with self._lock, self._session_factory() as session:
            last = session.scalar(sa.select(sa.func.max(models.GalleryChange.id))) or 0
            rows = session.execute(
                sa.select(models.Profile.space, models.Profile.speaker_id, models.Profile.dim,
                          models.Profile.vector)).all()
            by_space: dict[str, tuple[list[int], list[np.ndarray]]] = {}
            for space, speaker_id, dim, blob in rows:
                ids, vectors = by_space.setdefault(space, ([], []))
                ids.append(speaker_id)
                vectors.append(FloatVector.from_bytes(blob, dim))
            self._indexes = {}
            for space, (ids, vectors) in by_space.items():
                index = self._index_for(space, len(vectors[0]))
                index.rebuild(np.asarray(ids, dtype=np.int64), np.stack(vectors))
            self._last_change_id = last
            self._applied_recent = set()

    def sync(self) -> None:
        """Apply changes committed since the last sync (any process, any host)."""
        with self._lock, self._session_factory() as session:
            if self._missed_pruned_changes(session):
                # the rows are gone, and with them what they changed: start again from the profiles
                self.rebuild()
                return
            low = max(0, self._last_change_id - CHANGE_LOG_OVERLAP)
            changes = session.execute(
                sa.select(models.GalleryChange.id, models.GalleryChange.space,
                          models.GalleryChange.speaker_id)
                .where(models.GalleryChange.id > low).order_by(models.GalleryChange.id)).all()
            fresh = [c for c in changes if c.id > self._last_change_id or c.id not in self._applied_recent]
            if not fresh:
                return
            touched: dict[str, set[int]] = {}
            for change in fresh:
                touched.setdefault(change.space, set()).add(change.speaker_id)
            for space, speaker_ids in touched.items():
                # Apply the *current* state of each touched profile: idempotent and
                # correct whatever order the changes arrived in.
                current = session.execute(
                    sa.select(models.Profile.speaker_id, models.Profile.dim, models.Profile.vector)
                    .where(models.Profile.space == space,
                           models.Profile.speaker_id.in_(sorted(speaker_ids)))).all()
                present = {row.speaker_id for row in current}
                if current:
                    index = self._index_for(space, current[0].dim)
                    index.upsert(np.asarray([r.speaker_id for r in current], dtype=np.int64),
                                 np.stack([FloatVector.from_bytes(r.vector, r.dim) for r in current]))
                gone = sorted(speaker_ids - present)
                if gone and space in self._indexes:
                    self._indexes[space].remove(np.asarray(gone, dtype=np.int64))
            self._last_change_id = max(self._last_change_id, max(c.id for c in fresh))
            self._applied_recent.update(c.id for c in fresh)
            floor = self._last_change_id - CHANGE_LOG_OVERLAP
            self._applied_recent = {i for i in self._applied_recent if i > floor}

    def _missed_pruned_changes(self, session) -> bool:
        """Were change-log rows this process has not applied pruned (it went without a sync
        for longer than the retention period)? Pruning removes a prefix of the ids, so that
        is when the oldest remaining row lies beyond the next id expected here. An id that
        never held a committed row (a rolled-back insert) can look the same: one needless
        rebuild, never a missed change."""
        oldest = session.scalar(sa.select(sa.func.min(models.GalleryChange.id)))
        return oldest is not None and oldest > self._last_change_id + 1

    def _index_for(self, space: str, dim: int) -> VectorIndex:
        index = self._indexes.get(space)
        if index is None:
            index = VectorIndex(dim, self._factory, use_gpu=self._use_gpu)
            self._indexes[space] = index
        return index

    # -- queries --------------------------------------------------------------------
    def search(self, space: str, query: np.ndarray, k: int, restrict_to=None) -> list[tuple[int, float]]:
        index = self._indexes.get(space)
        if index is None or len(index) == 0:
            return []
        scores, ids = index.search(np.asarray(query, dtype=np.float32)[None, :], k, restrict_to=restrict_to)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def size(self, space: str) -> int:
        index = self._indexes.get(space)
        return 0 if index is None else len(index)

    def ids(self, space: str) -> list[int]:
        index = self._indexes.get(space)
        return [] if index is None else [int(i) for i in index.ids()]

    def sizes(self) -> dict[str, int]:
        return {space: len(index) for space, index in self._indexes.items()}

    def contains(self, space: str, speaker_id: int) -> bool:
        index = self._indexes.get(space)
        return index is not None and speaker_id in index
