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
import math
import threading
from typing import Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: FAISS GPU k-selection supports k up to 2048; larger k is answered by the CPU index.
_GPU_MAX_K = 2048
#: compact an HNSW index once tombstones exceed this fraction of the live vectors
_TOMBSTONE_COMPACT_RATIO = 0.25
#: efSearch when the factory string gives none (FAISS's default of 16 loses recall@1)
_DEFAULT_EF_SEARCH = 64
#: a trainable index of unknown structure is assumed to hold a 256-entry codebook
_DEFAULT_CODEBOOK_SIZE = 256
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
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory must be a FAISS index_factory string, got {factory!r}")
        if isinstance(exact_restrict_max, bool) or not isinstance(exact_restrict_max, (int, np.integer)) \
                or exact_restrict_max < 0:
            raise ValueError(f"exact_restrict_max must be a non-negative integer, got {exact_restrict_max!r}")
        self._dim = int(dim)
        self._factory = factory.strip()
        self._search_params = search_params.strip()
        self._exact_restrict_max = int(exact_restrict_max)
        self._lock = threading.RLock()

        # Build the requested index once up front: a bad factory/params fails here.
        probe = self._new_index(self._factory)
        self._min_train_points = 0 if probe.is_trained else _training_points_needed(probe)

        self._gpu_resources = None
        self._gpu_refused_factory: str | None = None
        self._gpu_unavailable_reason: str | None = "disabled (use_gpu=False)"
        if use_gpu:
            self._gpu_resources, self._gpu_unavailable_reason = _gpu_resources()

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
        ids_arr = self._validate_ids(ids, "ids", unique=True)
        vecs = self._validate_vectors(vectors, "vectors")
        _check_same_length(ids_arr, vecs)
        with self._lock:
            self._load(ids_arr, vecs)
            self._refresh_gpu()

    def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; an id already present has its vector replaced."""
        ids_arr = self._validate_ids(ids, "ids", unique=True)
        vecs = self._validate_vectors(vectors, "vectors")
        _check_same_length(ids_arr, vecs)
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
        ids_arr = self._validate_ids(ids, "ids", unique=False)
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
        q = self._validate_vectors(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        candidates = None if restrict_to is None else self._validate_ids(restrict_to, "restrict_to", unique=False)
        with self._lock:
            if candidates is None:
                scores, labels = self._search_all(q, k)
            else:
                scores, labels = self._search_candidates(q, k, candidates)
            return self._to_ids(scores, labels, k)

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        live = len(self._id_to_slot)
        if live == 0 or len(q) == 0:
            return _empty_result(len(q))
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
        return _drop_masked(scores, labels, dead_mask, k)

    def _search_candidates(self, q: np.ndarray, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot_of = self._id_to_slot
        slots = np.fromiter((slot_of[i] for i in np.unique(candidates).tolist() if i in slot_of), dtype=np.int64)
        if len(slots) == 0 or len(q) == 0:
            return _empty_result(len(q))
        k = min(k, len(slots))
        if len(slots) > self._exact_restrict_max and self._selector_supported:
            found = self._search_with_selector(q, k, faiss.IDSelectorBatch(slots))
            if found is not None:
                return found
        return _exact_top_k(q, self._vectors[slots], slots, k)

    def _search_with_selector(self, q: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray] | None:
        """Filtered search on the CPU index, or None when this index type takes no selector."""
        if not self._selector_supported:
            return None
        try:
            return self._index.search(q, k, params=self._selector_params(selector))
        except RuntimeError as exc:
            self._selector_supported = False
            log.info("FAISS index %s does not support ID selectors (%s); filtering without them",
                     self._effective_factory, _first_line(exc))
            return None

    def _selector_params(self, selector):
        # Typed parameters replace the index's own nprobe/efSearch, so carry them over.
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe, max_codes=ivf.max_codes)
        hnsw = _find_hnsw(self._index)
        if hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.hnsw.efSearch)
        return faiss.SearchParameters(sel=selector)

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
        try:
            index = faiss.index_factory(self._dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"cannot build FAISS index {factory!r} (dim {self._dim}, inner product): "
                             f"{_first_line(exc)}") from exc
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, max(1, round(math.sqrt(ivf.nlist))))
        hnsw = _find_hnsw(index)
        if hnsw is not None:
            hnsw.hnsw.efSearch = _DEFAULT_EF_SEARCH
        # The parameters are for the requested factory, not for the exact stand-in.
        if self._search_params and factory == self._factory:
            try:
                faiss.ParameterSpace().set_index_parameters(index, self._search_params)
            except RuntimeError as exc:
                raise ValueError(f"search_params {self._search_params!r} do not apply to {factory!r}: "
                                 f"{_first_line(exc)}") from exc
        # IVF indexes store ids natively; the others (Flat, HNSW, PQ) need an id map.
        if ivf is None and not isinstance(index, faiss.IndexIDMap):
            index = faiss.IndexIDMap2(index)
        return index

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
        supports_remove = _supports_remove(index)  # probed while empty: the probe scans the index
        slots = np.arange(n, dtype=np.int64)
        if n:
            index.add_with_ids(vecs, slots)
        self._index = index
        self._effective_factory = factory
        self._supports_remove = supports_remove
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
            self._gpu_unavailable_reason = f"{self._effective_factory} cannot run on GPU: {_first_line(exc)}"
            log.warning("FAISS: %s; searching on CPU", self._gpu_unavailable_reason)

    def _validate_vectors(self, values, what: str) -> np.ndarray:
        arr = np.asarray(values)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{what} must be floating point, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise ValueError(f"{what} must have shape (n, {self._dim}) or ({self._dim},), "
                             f"got {np.shape(values)}")
        # A private C-contiguous copy (normalised in place below); float64 values beyond
        # the float32 range become inf and are rejected with the NaNs.
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{what} contain an all-zero vector, which has no cosine similarity")
        arr /= norms
        return arr

    @staticmethod
    def _validate_ids(values, what: str, *, unique: bool) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be a 1-D sequence of integers, got shape {arr.shape}")
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what} must fit in int64")
        arr = arr.astype(np.int64)
        if (arr < 0).any():
            raise ValueError(f"{what} must be non-negative (-1 marks a missing result)")
        if unique and len(np.unique(arr)) != len(arr):
            raise ValueError(f"{what} contain duplicates")
        return arr


# ---------------------------------------------------------------------- helpers

def _check_same_length(ids: np.ndarray, vecs: np.ndarray) -> None:
    if len(ids) != len(vecs):
        raise ValueError(f"got {len(ids)} ids for {len(vecs)} vectors")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # FAISS messages start with "Error in <C++ signature> at <file>:<line>: Error: '<check>' failed"
    return text.splitlines()[0] if text else type(exc).__name__


def _empty_result(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64)


def _exact_top_k(q: np.ndarray, candidates: np.ndarray, slots: np.ndarray, k: int):
    """Exact inner-product top-k of q against candidate rows; returns (scores, slots)."""
    scores = q @ candidates.T
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return (np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
            slots[np.take_along_axis(top, order, axis=1)])


def _drop_masked(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int):
    """Per row, keep the first k results whose mask is False (order preserved), -1 padded."""
    labels = np.where(mask, -1, labels)
    keep = labels >= 0
    # stable sort puts kept entries first in their original (score) order
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)


def _find_hnsw(index):
    """The IndexHNSW inside ``index`` (through id maps / pre-transforms), or None."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def _training_points_needed(index) -> int:
    """Vectors FAISS wants before training ``index`` without complaining (k-means minimum)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    needs = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needs.append(ivf.cp.min_points_per_centroid * ivf.nlist)
        index = faiss.downcast_index(ivf)
    elif isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    pq = getattr(index, "pq", None)
    if pq is not None:
        needs.append(pq.cp.min_points_per_centroid * pq.ksub)
    if not needs:  # e.g. scalar quantizers: assume a typical 256-entry codebook
        needs.append(faiss.ClusteringParameters().min_points_per_centroid * _DEFAULT_CODEBOOK_SIZE)
    return max(needs)


def _supports_remove(index) -> bool:
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.empty(0, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def _gpu_resources():
    """(StandardGpuResources, None) when FAISS can use a GPU here, else (None, reason)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return None, "this FAISS build has no GPU support"
    try:
        count = faiss.get_num_gpus()
    except RuntimeError as exc:
        return None, f"GPU query failed: {_first_line(exc)}"
    if count <= 0:
        return None, "no GPU visible"
    return faiss.StandardGpuResources(), None
