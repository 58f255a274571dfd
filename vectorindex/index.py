"""In-memory FAISS index of speaker embeddings, scored by cosine similarity.

Vectors are L2-normalised float32 and the index uses METRIC_INNER_PRODUCT, so a score is
the cosine similarity. The database is the source of truth: the service fills the index
with ``rebuild`` at start and keeps it in step with ``upsert``/``remove``.

Design notes
------------
*Internal labels.* FAISS stores internal *slot* numbers, not database ids; ``_slot_ids``
maps a slot back to its database id. Slots are what make HNSW removal possible (below):
a tombstoned vector and the replacement vector of the same database id need different
labels.

*Mirror.* Every live vector is also kept in a float32 array indexed by slot (n x dim;
768 MB at 1M x 192). It is used for exact scoring of small ``restrict_to`` candidate
sets, for (re)training IVF/PQ indexes and for compacting HNSW. For "Flat" it doubles
memory; we accept that for one code path that works for every factory.

*Removal.* Indexes that implement ``remove_ids`` (Flat, IVF*, PQ, ...) delete at once and
their freed slots are reused. HNSW graphs cannot delete nodes, so a removed or replaced
vector is *tombstoned*: it stays in the graph (still routing searches, which keeps the
graph connected) and is excluded from results with an ``IDSelectorNot``. Once tombstones
exceed ``_TOMBSTONE_COMPACT_RATIO`` of the live count the index is rebuilt from the mirror.
We chose this over rebuilding on every removal because an HNSW build is O(n log n)
(minutes at 1M vectors on 2 cores) while re-enrollment -- an upsert of an existing id --
is routine; with the ratio the rebuild cost amortises to a constant per removal.

*Training.* IVF/PQ factories need training. ``rebuild`` trains on the vectors it is
given; while there are fewer than FAISS's own minimum (``min_points_per_centroid`` x
centroids, e.g. 39 x 256 = 9984 for IVF256) the index serves exact search instead,
``effective_factory`` says "Flat" and ``exact_fallback_reason`` says why. The first
upsert that reaches the minimum trains the real index from the mirror.

*GPU.* With ``use_gpu`` and a FAISS GPU build with a visible GPU, searches are served from
a GPU copy made with ``index_cpu_to_gpu`` and refreshed (a full copy) at the end of every
mutation, so searches never wait for a transfer. The CPU index stays the source of
truth. Index types FAISS cannot put on a GPU (HNSW), searches that need an ID selector
(``restrict_to`` through FAISS, tombstones) and k above the GPU limit use the CPU index.

*Threads.* One lock serialises mutations and searches (Flask serves requests from
threads, and FAISS indexes are not safe to mutate while searched).
"""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import faiss
import numpy as np

from vectorindex.faiss_build import (first_line, gpu_resources, new_index, selector_params, supports_remove,
                                     training_points_needed)
from vectorindex.inputs import check_index_options, check_same_length, database_ids, positive_k, unit_vectors
from vectorindex.topk import drop_masked, empty_result, exact_top_k

log = logging.getLogger(__name__)

#: FAISS GPU k-selection supports k up to 2048; larger k is answered by the CPU index.
_GPU_MAX_K = 2048
#: compact an HNSW index once tombstones exceed this fraction of the live vectors
_TOMBSTONE_COMPACT_RATIO = 0.25
#: score reported next to a -1 id (no result)
PAD_SCORE = -np.inf


class VectorIndex:
    """FAISS index from database id (int64 >= 0) to unit vector, searched by cosine.

    ``search_params`` is a FAISS ParameterSpace string applied after the defaults, e.g.
    ``"nprobe=16"`` for IVF or ``"efSearch=128,efConstruction=40"`` for HNSW. Defaults:
    nprobe = round(sqrt(nlist)), efSearch = 64.

    ``exact_restrict_max``: ``restrict_to`` lists up to this many live candidates are
    scored exactly from the mirror (cheaper than a filtered full scan on Flat, and exact
    where a selective filter would make HNSW/IVF miss candidates); longer lists use a
    FAISS ID selector on the index.
    """

    def __init__(self, dim: int, factory: str = "Flat", *, use_gpu: bool = True,
                 search_params: str = "", exact_restrict_max: int = 20_000) -> None:
        check_index_options(dim, factory, exact_restrict_max)
        self._dim = int(dim)
        self._factory = factory.strip()
        self._search_params = search_params.strip()
        self._exact_restrict_max = int(exact_restrict_max)
        self._lock = threading.RLock()

        # Build the requested index once up front: a bad factory/params fails here.
        probe = self._new_index(self._factory)
        self._min_train_points = 0 if probe.is_trained else training_points_needed(probe)

        self._gpu_resources = None
        self._gpu_refused_factory: str | None = None
        self._gpu_unavailable_reason: str | None = "disabled (use_gpu=False)"
        if use_gpu:
            self._gpu_resources, self._gpu_unavailable_reason = gpu_resources()

        self._load(np.empty(0, np.int64), np.empty((0, self._dim), np.float32))
        self._refresh_gpu()

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def factory(self) -> str:
        """The factory string asked for."""
        return self._factory

    @property
    def effective_factory(self) -> str:
        """The factory string actually serving: "Flat" while an IVF/PQ index is untrained."""
        with self._lock:
            return self._effective_factory

    @property
    def exact_fallback_reason(self) -> str | None:
        """Why exact search stands in for the requested factory, or None when it doesn't."""
        with self._lock:
            if self._effective_factory == self._factory:
                return None
            return (f"{self._factory} needs {self._min_train_points} vectors to train; "
                    f"the index holds {len(self._id_to_slot)}, so it searches exactly until then")

    @property
    def device(self) -> str:
        """Where unrestricted searches run: "gpu" (a GPU copy of the index) or "cpu"."""
        with self._lock:
            return "gpu" if self._gpu_index is not None else "cpu"

    def describe(self) -> dict:
        """A JSON-friendly summary for health/admin endpoints and logs."""
        with self._lock:
            return {"dim": self._dim, "factory": self._factory,
                    "effective_factory": self._effective_factory,
                    "exact_fallback_reason": self.exact_fallback_reason,
                    "device": self.device,
                    "gpu_unavailable_reason": None if self._gpu_index is not None
                    else self._gpu_unavailable_reason,
                    "size": len(self._id_to_slot), "tombstones": len(self._dead_slots)}

    def __len__(self) -> int:
        with self._lock:
            return len(self._id_to_slot)

    def __contains__(self, id_: object) -> bool:
        with self._lock:
            return id_ in self._id_to_slot

    def ids(self) -> np.ndarray:
        """The database ids in the index, ascending (int64)."""
        with self._lock:
            out = np.fromiter(self._id_to_slot.keys(), dtype=np.int64, count=len(self._id_to_slot))
        out.sort()
        return out

    # ------------------------------------------------------------------ mutations

    def rebuild(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content (bulk load from the database); trains IVF/PQ indexes."""
        ids_arr = database_ids(ids, "ids", unique=True)
        vecs = unit_vectors(vectors, self._dim, "vectors")
        check_same_length(ids_arr, vecs)
        with self._lock:
            self._load(ids_arr, vecs)
            self._refresh_gpu()

    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; an id already present has its vector replaced."""
        ids_arr = database_ids(ids, "ids", unique=True)
        vecs = unit_vectors(vectors, self._dim, "vectors")
        check_same_length(ids_arr, vecs)
        if len(ids_arr) == 0:
            return
        with self._lock:
            id_list = ids_arr.tolist()
            self._release([self._id_to_slot.pop(i) for i in id_list if i in self._id_to_slot])
            slots = self._allocate(len(id_list))
            self._vectors[slots] = vecs
            self._slot_ids[slots] = ids_arr
            self._index.add_with_ids(vecs, slots)
            self._id_to_slot.update(zip(id_list, slots.tolist()))
            self._after_mutation()

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove ids; ids not in the index are ignored. Returns how many were removed."""
        ids_arr = database_ids(ids, "ids", unique=False)
        with self._lock:
            slots = [self._id_to_slot.pop(i) for i in ids_arr.tolist() if i in self._id_to_slot]
            if not slots:
                return 0
            self._release(slots)
            self._after_mutation()
            return len(slots)

    # ------------------------------------------------------------------ search

    def search(self, queries: np.ndarray, k: int, *,
               restrict_to: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine for each query row.

        Returns ``(scores, ids)``, both ``(n, k)``: float32 scores in descending order and
        int64 database ids; missing results (fewer than k vectors, or candidates) have id
        -1 and score -inf. ``restrict_to`` limits the search to those ids (ids not in the
        index are ignored).
        """
        q = unit_vectors(queries, self._dim, "queries")
        k = positive_k(k)
        candidates = None if restrict_to is None else database_ids(restrict_to, "restrict_to", unique=False)
        with self._lock:
            if candidates is None:
                scores, labels = self._search_all(q, k)
            else:
                scores, labels = self._search_candidates(q, k, candidates)
            return self._to_ids(scores, labels, k)

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        live = len(self._id_to_slot)
        if live == 0 or len(q) == 0:
            return empty_result(len(q))
        k = min(k, live)
        if not self._dead_slots:
            index = self._gpu_index if self._gpu_index is not None and k <= _GPU_MAX_K else self._index
            return index.search(q, k)
        if self._not_dead_selector is None:
            dead = np.fromiter(self._dead_slots, dtype=np.int64, count=len(self._dead_slots))
            batch = faiss.IDSelectorBatch(dead)
            self._not_dead_selector = (batch, faiss.IDSelectorNot(batch))  # Not only borrows batch
        found = self._search_with_selector(q, k, self._not_dead_selector[1])
        if found is not None:
            return found
        # The index takes no selector: over-fetch by the number of tombstones, then drop them.
        fetch = min(k + len(self._dead_slots), self._index.ntotal)
        scores, labels = self._index.search(q, fetch)
        dead_mask = np.isin(labels, np.fromiter(self._dead_slots, dtype=np.int64))
        return drop_masked(scores, labels, dead_mask, k)

    def _search_candidates(self, q: np.ndarray, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot_of = self._id_to_slot
        slots = np.fromiter((slot_of[i] for i in np.unique(candidates).tolist() if i in slot_of), dtype=np.int64)
        if len(slots) == 0 or len(q) == 0:
            return empty_result(len(q))
        k = min(k, len(slots))
        if len(slots) > self._exact_restrict_max and self._selector_supported:
            found = self._search_with_selector(q, k, faiss.IDSelectorBatch(slots))
            if found is not None:
                return found
        return exact_top_k(q, self._vectors[slots], slots, k)

    def _search_with_selector(self, q: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray] | None:
        """Filtered search on the CPU index, or None when this index type takes no selector."""
        if not self._selector_supported:
            return None
        try:
            return self._index.search(q, k, params=selector_params(self._index, selector))
        except RuntimeError as exc:
            self._selector_supported = False
            log.info("FAISS index %s does not support ID selectors (%s); filtering without them",
                     self._effective_factory, first_line(exc))
            return None

    def _to_ids(self, scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n, found = labels.shape
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), PAD_SCORE, dtype=np.float32)
        hit = labels >= 0
        out_ids[:, :found][hit] = self._slot_ids[labels[hit]]
        out_scores[:, :found][hit] = scores[hit]
        return out_scores, out_ids

    # ------------------------------------------------------------------ internals

    def _new_index(self, factory: str):
        """A fresh, empty CPU index for ``factory`` whose add_with_ids takes slot labels."""
        # The parameters are for the requested factory, not for the exact stand-in.
        return new_index(self._dim, factory, self._search_params if factory == self._factory else "")

    def _load(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Replace everything with ``ids``/``vecs`` (unit, float32); slots become 0..n-1."""
        n = len(ids)
        if self._min_train_points and n < self._min_train_points:
            factory = "Flat"
            index = self._new_index(factory)
            if n:
                log.info("FAISS %s needs %d training vectors, have %d: serving exact search",
                         self._factory, self._min_train_points, n)
        else:
            factory = self._factory
            index = self._new_index(factory)
            if not index.is_trained:
                index.train(vecs)
        removable = supports_remove(index)  # probed while empty: the probe scans the index
        slots = np.arange(n, dtype=np.int64)
        if n:
            index.add_with_ids(vecs, slots)
        self._index = index
        self._effective_factory = factory
        self._supports_remove = removable
        self._selector_supported = True
        # Callers pass arrays nobody else holds (validated copies or fancy-indexed rows).
        self._vectors = vecs
        self._slot_ids = ids
        self._n_slots = n
        self._free_slots: list[int] = []
        self._dead_slots: set[int] = set()
        self._not_dead_selector = None
        self._id_to_slot: dict[int, int] = dict(zip(ids.tolist(), slots.tolist()))
        self._gpu_index = None

    def _allocate(self, count: int) -> np.ndarray:
        reused = [self._free_slots.pop() for _ in range(min(count, len(self._free_slots)))]
        fresh = count - len(reused)
        needed = self._n_slots + fresh
        if needed > len(self._vectors):
            capacity = max(needed, 2 * len(self._vectors), 64)
            vectors = np.empty((capacity, self._dim), dtype=np.float32)
            vectors[:self._n_slots] = self._vectors[:self._n_slots]
            slot_ids = np.full(capacity, -1, dtype=np.int64)
            slot_ids[:self._n_slots] = self._slot_ids[:self._n_slots]
            self._vectors, self._slot_ids = vectors, slot_ids
        slots = np.concatenate([np.asarray(reused, dtype=np.int64),
                                np.arange(self._n_slots, needed, dtype=np.int64)])
        self._n_slots = needed
        return slots

    def _release(self, slots: list[int]) -> None:
        """Take slots (already popped from _id_to_slot) out of search results."""
        if not slots:
            return
        arr = np.asarray(slots, dtype=np.int64)
        self._slot_ids[arr] = -1
        if self._supports_remove:
            self._index.remove_ids(faiss.IDSelectorBatch(arr))
            self._free_slots.extend(slots)
        else:
            self._dead_slots.update(slots)
            self._not_dead_selector = None

    def _after_mutation(self) -> None:
        live = len(self._id_to_slot)
        pending_training = self._effective_factory != self._factory and live >= self._min_train_points
        if pending_training or len(self._dead_slots) > _TOMBSTONE_COMPACT_RATIO * live:
            slots = np.fromiter(self._id_to_slot.values(), dtype=np.int64, count=live)
            slots.sort()
            self._load(self._slot_ids[slots], self._vectors[slots])
        self._refresh_gpu()

    def _refresh_gpu(self) -> None:
        self._gpu_index = None
        # Don't retry (and re-log) a factory FAISS already refused to put on the GPU.
        if self._gpu_resources is None or self._gpu_refused_factory == self._effective_factory:
            return
        try:
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
        except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
            self._gpu_refused_factory = self._effective_factory
            self._gpu_unavailable_reason = f"{self._effective_factory} cannot run on GPU: {first_line(exc)}"
            log.warning("FAISS: %s; searching on CPU", self._gpu_unavailable_reason)
