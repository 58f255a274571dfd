"""The in-memory side of the voice profiles, one embedding space at a time: a FAISS index
that preselects candidates, and the stored vectors themselves that score them, so a
request never reads profile vectors from the database.

The database is the truth. A process loads every profile on first use (`nessa serve`
before it listens) and then follows the `gallery_changes` log (written in the same
transaction as every profile change), so a profile committed by a worker on another host
is searchable on the next request here.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from app.store import profiles
from app.store.profiles import StoredProfile
from vectorindex import VectorIndex

# Change-log ids are allocated at insert time but become visible at commit, so with
# concurrent writers a lower id can appear after a higher one. We re-read this many ids
# below the highest seen and skip those already applied.
CHANGE_LOG_OVERLAP = 256


class ProfileIndex:
    """Every space's profiles in memory, searchable, kept in step with the database."""

    def __init__(self, session_factory, *, factory: str = "Flat", use_gpu: bool = True):
        self._session_factory = session_factory
        self._factory = factory
        self._use_gpu = use_gpu
        self._indexes: dict[str, VectorIndex] = {}
        self._profiles: dict[str, dict[int, StoredProfile]] = {}
        self._loaded = False
        self._last_change_id = 0
        self._applied_recent: set[int] = set()
        self._lock = threading.RLock()

    # -- loading and following the change log ----------------------------------------
    def rebuild(self, session=None) -> None:
        """Load every space's profiles from the database (in `session`, or a new one)."""
        with self._lock, self._session(session) as session:
            last = profiles.newest_change_id(session)
            indexes, stored = {}, {}
            for space, rows in profiles.read_all(session).items():
                index = VectorIndex(len(rows[0].vector), self._factory, use_gpu=self._use_gpu)
                index.rebuild(np.asarray([p.speaker_id for p in rows], dtype=np.int64),
                              np.stack([p.vector for p in rows]))
                indexes[space], stored[space] = index, {p.speaker_id: p for p in rows}
            self._indexes, self._profiles = indexes, stored
            self._last_change_id = last
            self._applied_recent = set()
            self._loaded = True

    def sync(self, session=None) -> None:
        """Apply changes committed since the last sync (any process, any host); the first
        call loads everything."""
        with self._lock, self._session(session) as session:
            if not self._loaded or self._missed_pruned_changes(session):
                # pruned rows are gone, and with them what they changed: start again from the profiles
                self.rebuild(session)
                return
            changes = profiles.changes_after(session, max(0, self._last_change_id - CHANGE_LOG_OVERLAP))
            fresh = [c for c in changes if c.id > self._last_change_id or c.id not in self._applied_recent]
            if not fresh:
                return
            touched: dict[str, set[int]] = {}
            for change in fresh:
                touched.setdefault(change.space, set()).add(change.speaker_id)
            for space, speaker_ids in touched.items():
                # Apply the *current* state of each touched profile: idempotent and
                # correct whatever order the changes arrived in.
                self._apply(space, speaker_ids, profiles.read(session, space, sorted(speaker_ids)))
            self._last_change_id = max(self._last_change_id, max(c.id for c in fresh))
            self._applied_recent.update(c.id for c in fresh)
            floor = self._last_change_id - CHANGE_LOG_OVERLAP
            self._applied_recent = {i for i in self._applied_recent if i > floor}

    def _apply(self, space: str, speaker_ids: set[int], current: list[StoredProfile]) -> None:
        stored = self._profiles.setdefault(space, {})
        if current:
            index = self._indexes.get(space)
            if index is None:
                index = self._indexes[space] = VectorIndex(len(current[0].vector), self._factory,
                                                           use_gpu=self._use_gpu)
            index.upsert(np.asarray([p.speaker_id for p in current], dtype=np.int64),
                         np.stack([p.vector for p in current]))
            stored.update((p.speaker_id, p) for p in current)
        gone = sorted(speaker_ids - {p.speaker_id for p in current})
        if gone and space in self._indexes:
            self._indexes[space].remove(np.asarray(gone, dtype=np.int64))
        for speaker_id in gone:
            stored.pop(speaker_id, None)

    def _missed_pruned_changes(self, session) -> bool:
        """Were change-log rows this process has not applied pruned (it went without a sync
        for longer than the retention period)? Pruning removes a prefix of the ids, so that
        is when the oldest remaining row lies beyond the next id expected here. An id that
        never held a committed row (a rolled-back insert) can look the same: one needless
        rebuild, never a missed change."""
        oldest = profiles.oldest_change_id(session)
        return oldest is not None and oldest > self._last_change_id + 1

    def _session(self, session):
        return contextlib.nullcontext(session) if session is not None else self._session_factory()

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self.rebuild()

    # -- queries --------------------------------------------------------------------
    def search(self, space: str, query: np.ndarray, k: int, restrict_to=None) -> list[tuple[int, float]]:
        self._ensure_loaded()
        index = self._indexes.get(space)
        if index is None or len(index) == 0:
            return []
        scores, ids = index.search(np.asarray(query, dtype=np.float32)[None, :], k, restrict_to=restrict_to)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def profiles(self, space: str, speaker_ids) -> dict[int, StoredProfile]:
        """The stored profiles of these speakers in `space` (those that have one), exactly
        as the database holds them as of the last sync."""
        self._ensure_loaded()
        stored = self._profiles.get(space, {})
        found = {i: stored.get(i) for i in speaker_ids}  # .get: a concurrent sync may remove one
        return {i: profile for i, profile in found.items() if profile is not None}

    def size(self, space: str) -> int:
        self._ensure_loaded()
        index = self._indexes.get(space)
        return 0 if index is None else len(index)

    def ids(self, space: str) -> list[int]:
        self._ensure_loaded()
        index = self._indexes.get(space)
        return [] if index is None else [int(i) for i in index.ids()]

    def sizes(self) -> dict[str, int]:
        self._ensure_loaded()
        return {space: len(index) for space, index in list(self._indexes.items())}

    def contains(self, space: str, speaker_id: int) -> bool:
        self._ensure_loaded()
        index = self._indexes.get(space)
        return index is not None and speaker_id in index
