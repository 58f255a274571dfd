"""VectorIndex against exact numpy search (FAISS-style parity tests, seeded random data)."""
from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from vectorindex import VectorIndex

DIM = 32


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(rng: np.random.Generator, n: int, dim: int, n_clusters: int) -> np.ndarray:
    """Unit vectors around random centres, like embeddings of related speakers."""
    centres = unit_vectors(rng, n_clusters, dim)
    x = centres[rng.integers(0, n_clusters, n)] + 0.6 * unit_vectors(rng, n, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noisy_copies(rng: np.random.Generator, base: np.ndarray, n: int, noise: float = 0.3) -> np.ndarray:
    """Queries = random stored vectors + noise: a known voice heard again."""
    picks = base[rng.integers(0, len(base), n)]
    q = picks + noise * unit_vectors(rng, n, base.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_search(stored: dict[int, np.ndarray], queries: np.ndarray, k: int,
                 restrict_to=None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference: cosine top-k over ``stored`` (id -> vector), -1/-inf padded."""
    ids = np.array(sorted(stored if restrict_to is None else set(restrict_to) & stored.keys()),
                   dtype=np.int64)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    if len(ids) == 0:
        return out_scores, out_ids
    matrix = np.stack([stored[i] for i in ids.tolist()])
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ matrix.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    found = order.shape[1]
    out_ids[:, :found] = ids[order]
    out_scores[:, :found] = np.take_along_axis(scores, order, axis=1)
    return out_scores, out_ids


def assert_matches_exact(index: VectorIndex, stored: dict, queries: np.ndarray, k: int, restrict_to=None):
    scores, ids = index.search(queries, k, restrict_to=restrict_to)
    want_scores, want_ids = exact_search(stored, queries, k, restrict_to)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (len(queries), k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)


def recall_at_1(index: VectorIndex, stored: dict, queries: np.ndarray) -> float:
    _, got = index.search(queries, 1)
    _, want = exact_search(stored, queries, 1)
    return float(np.mean(got[:, 0] == want[:, 0]))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------- Flat parity

@pytest.mark.parametrize("k", [1, 5, 37, 500])
def test_flat_equals_exact_search(rng, k):
    ids = rng.choice(10**12, size=400, replace=False).astype(np.int64)  # sparse database ids
    vectors = unit_vectors(rng, 400)
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    index.rebuild(ids, vectors)
    stored = dict(zip(ids.tolist(), vectors))
    assert_matches_exact(index, stored, unit_vectors(rng, 25), k)


def test_flat_parity_through_upserts_replacements_and_removals(rng):
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    stored: dict[int, np.ndarray] = {}
    queries = unit_vectors(rng, 20)

    def upsert(ids):
        vectors = unit_vectors(rng, len(ids))
        index.upsert(ids, vectors)
        stored.update(zip(ids, vectors))

    def check():
        assert len(index) == len(stored)
        np.testing.assert_array_equal(index.ids(), sorted(stored))
        for k in (1, 10):
            assert_matches_exact(index, stored, queries, k)
        candidates = rng.choice(sorted(stored), size=min(15, len(stored)), replace=False).tolist()
        assert_matches_exact(index, stored, queries, 5, restrict_to=candidates + [999_999])

    upsert(list(range(0, 300)))
    check()
    upsert(list(range(250, 400)))          # 50 replacements, 100 new
    check()
    assert index.remove(list(range(0, 100, 2)) + [123_456]) == 50
    for i in range(0, 100, 2):
        del stored[i]
    check()
    upsert([0, 2, 4, 1000])                # re-add removed ids (reusing freed slots)
    check()


@pytest.mark.parametrize("exact_restrict_max", [20_000, 0], ids=["mirror-exact", "faiss-selector"])
def test_flat_restrict_to_equals_exact_over_candidates(rng, exact_restrict_max):
    vectors = unit_vectors(rng, 300)
    index = VectorIndex(DIM, "Flat", use_gpu=False, exact_restrict_max=exact_restrict_max)
    index.rebuild(np.arange(300) * 7, vectors)
    stored = dict(zip((np.arange(300) * 7).tolist(), vectors))
    queries = unit_vectors(rng, 10)
    candidates = [7, 14, 14, 700, 1001, 2093]   # a duplicate and an unknown id (1001)
    assert_matches_exact(index, stored, queries, 3, restrict_to=candidates)
    assert_matches_exact(index, stored, queries, 10, restrict_to=candidates)  # k > candidates
    scores, ids = index.search(queries, 4, restrict_to=[])
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_scores_are_cosine_for_unnormalised_input(rng):
    raw = rng.standard_normal((50, DIM)) * rng.uniform(0.1, 10, (50, 1))  # float64, any norm
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    index.upsert(np.arange(50), raw)
    query = rng.standard_normal(DIM) * 3.0                              # a single 1-D query
    scores, ids = index.search(query, 50)
    cosines = raw @ query / (np.linalg.norm(raw, axis=1) * np.linalg.norm(query))
    np.testing.assert_allclose(scores[0], cosines[ids[0]], atol=1e-5)
    assert np.all(np.diff(scores[0]) <= 0)


# ---------------------------------------------------------------------- approximate indexes

@pytest.mark.parametrize("factory, search_params", [("HNSW32,Flat", ""), ("IVF64,Flat", "nprobe=8")])
def test_approximate_recall_at_1(rng, factory, search_params):
    vectors = clustered_vectors(rng, 4000, 64, n_clusters=80)
    ids = np.arange(4000, dtype=np.int64) + 10_000
    index = VectorIndex(64, factory, use_gpu=False, search_params=search_params)
    index.rebuild(ids, vectors)
    assert index.effective_factory == factory and index.exact_fallback_reason is None
    stored = dict(zip(ids.tolist(), vectors))
    queries = noisy_copies(rng, vectors, 300)
    assert recall_at_1(index, stored, queries) >= 0.95


def test_hnsw_removal_tombstones_then_compacts(rng):
    vectors = clustered_vectors(rng, 2000, DIM, n_clusters=40)
    index = VectorIndex(DIM, "HNSW32,Flat", use_gpu=False)
    index.rebuild(np.arange(2000), vectors)
    stored = dict(zip(range(2000), vectors))
    queries = np.concatenate([vectors[:100], noisy_copies(rng, vectors, 200)])

    removed = list(range(0, 200))                       # 10%: below the compaction ratio
    assert index.remove(removed) == 200
    for i in removed:
        del stored[i]
    replaced = list(range(200, 250))
    new_vectors = unit_vectors(rng, 50)
    index.upsert(replaced, new_vectors)
    stored.update(zip(replaced, new_vectors))
    assert index.describe()["tombstones"] == 250 and len(index) == 1800

    _, ids = index.search(queries, 10)
    assert not np.isin(ids, removed).any()
    # a replaced id answers to its new vector; its old (tombstoned) vector is gone
    scores, ids = index.search(new_vectors, 1)
    assert ids[:, 0].tolist() == replaced
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    _, ids = index.search(vectors[200:250], 1)
    assert (ids[:, 0] != np.array(replaced)).all()
    assert recall_at_1(index, stored, queries) >= 0.95
    assert_matches_exact(index, stored, queries, 5, restrict_to=list(range(150, 260)))

    assert index.remove(list(range(250, 700))) == 450   # tombstones now exceed 25% of live
    for i in range(250, 700):
        del stored[i]
    assert index.describe()["tombstones"] == 0 and len(index) == 1350
    np.testing.assert_array_equal(index.ids(), sorted(stored))
    assert recall_at_1(index, stored, queries) >= 0.95


def test_hnsw_restrict_to_large_candidate_list_uses_selector(rng):
    vectors = clustered_vectors(rng, 3000, DIM, n_clusters=30)
    index = VectorIndex(DIM, "HNSW32,Flat", use_gpu=False, exact_restrict_max=100)
    index.rebuild(np.arange(3000), vectors)
    candidates = list(range(0, 3000, 2))                # 1500 > 100: filtered HNSW search
    stored = dict(zip(range(3000), vectors))
    queries = noisy_copies(rng, vectors[candidates], 200)
    _, got = index.search(queries, 1, restrict_to=candidates)
    _, want = exact_search(stored, queries, 1, restrict_to=candidates)
    assert np.isin(got, candidates).all()
    assert np.mean(got[:, 0] == want[:, 0]) >= 0.95


def test_ivf_serves_exact_search_until_it_can_train(rng):
    index = VectorIndex(DIM, "IVF64,Flat", use_gpu=False)
    needed = 39 * 64                                    # FAISS k-means minimum for 64 lists
    vectors = clustered_vectors(rng, needed + 100, DIM, n_clusters=64)
    index.rebuild(np.arange(500), vectors[:500])
    assert index.effective_factory == "Flat"
    assert str(needed) in index.exact_fallback_reason
    stored = dict(zip(range(500), vectors[:500]))
    queries = unit_vectors(rng, 10)
    assert_matches_exact(index, stored, queries, 5)

    index.upsert(np.arange(500, needed), vectors[500:needed])    # reaches the minimum: trains
    assert index.effective_factory == "IVF64,Flat" and index.exact_fallback_reason is None
    assert len(index) == needed
    stored.update(zip(range(500, needed), vectors[500:needed]))
    assert index.remove([0, 1, 2]) == 3                          # IVF removes in place
    for i in (0, 1, 2):
        del stored[i]
    assert index.describe()["tombstones"] == 0
    assert recall_at_1(index, stored, noisy_copies(rng, vectors[3:needed], 200)) >= 0.95


# ---------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat", "IVF64,Flat"])
def test_empty_index_returns_padding(rng, factory):
    index = VectorIndex(DIM, factory, use_gpu=False)
    scores, ids = index.search(unit_vectors(rng, 3), 4)
    assert ids.shape == (3, 4) and (ids == -1).all() and np.isneginf(scores).all()
    assert len(index) == 0 and index.ids().size == 0


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat"])
def test_k_larger_than_index_pads_with_minus_one(rng, factory):
    vectors = unit_vectors(rng, 6)
    index = VectorIndex(DIM, factory, use_gpu=False)
    index.upsert([5, 6, 7, 8, 9, 10], vectors)
    scores, ids = index.search(vectors[:2], 10)
    assert ids.shape == (2, 10)
    assert (ids[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    assert sorted(ids[0, :6].tolist()) == [5, 6, 7, 8, 9, 10] and ids[0, 0] == 5 and ids[1, 0] == 6


def test_removing_unknown_ids_is_a_noop(rng):
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    index.upsert([1, 2, 3], unit_vectors(rng, 3))
    assert index.remove([4, 5]) == 0
    assert index.remove([]) == 0
    assert len(index) == 3 and 2 in index and 4 not in index
    np.testing.assert_array_equal(index.ids(), [1, 2, 3])


def test_invalid_input_raises_value_error(rng):
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    good = unit_vectors(rng, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        index.upsert([1, 2], unit_vectors(rng, 2, dim=DIM + 1))
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        index.search(unit_vectors(rng, 1, dim=16), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.upsert([1, 2], np.where(np.eye(2, DIM, dtype=bool), np.nan, good))
    with pytest.raises(ValueError, match="floating point"):
        index.upsert([1, 2], np.ones((2, DIM), dtype=np.int32))
    with pytest.raises(ValueError, match="all-zero"):
        index.upsert([1, 2], np.zeros((2, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.upsert([1, 2], good[:1])
    with pytest.raises(ValueError, match="duplicates"):
        index.upsert([1, 1], good)
    with pytest.raises(ValueError, match="non-negative"):
        index.upsert([-1, 2], good)
    with pytest.raises(ValueError, match="integers"):
        index.remove([1.5])
    with pytest.raises(ValueError, match="k must be"):
        index.search(good, 0)
    with pytest.raises(ValueError, match="cannot build FAISS index"):
        VectorIndex(DIM, "NotAnIndex")
    with pytest.raises(ValueError, match="search_params"):
        VectorIndex(DIM, "Flat", search_params="nprobe=4")
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0)
    assert len(index) == 0                              # nothing half-applied


# ---------------------------------------------------------------------- GPU serving and threads

class _FakeGpuIndex:
    """Stands in for a GPU copy: a snapshot of the CPU index that counts its searches."""

    def __init__(self, cpu_index):
        self.snapshot = faiss.clone_index(cpu_index)
        self.searches = 0

    def search(self, q, k):
        self.searches += 1
        return self.snapshot.search(q, k)


@pytest.fixture
def fake_gpu(monkeypatch):
    copies: list[_FakeGpuIndex] = []

    def index_cpu_to_gpu(resources, device, index):
        if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW):
            raise RuntimeError("Error in index_cpu_to_gpu: This index type is not implemented on GPU.")
        copies.append(_FakeGpuIndex(index))
        return copies[-1]

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    return copies


def test_gpu_copy_serves_searches_and_is_refreshed_after_mutations(rng, fake_gpu):
    index = VectorIndex(DIM, "Flat", use_gpu=True)
    assert index.device == "gpu"
    vectors = unit_vectors(rng, 20)
    index.upsert(np.arange(20), vectors)
    _, ids = index.search(vectors[7], 1)
    assert ids[0, 0] == 7 and fake_gpu[-1].searches == 1
    index.remove([7])
    _, ids = index.search(vectors[7], 20)
    assert 7 not in ids and fake_gpu[-1].searches == 1  # served by the refreshed copy
    # restricted search needs an ID selector, which GPU indexes lack: answered on CPU
    _, ids = index.search(vectors[3], 1, restrict_to=[3, 4])
    assert ids[0, 0] == 3 and fake_gpu[-1].searches == 1
    assert VectorIndex(DIM, "Flat", use_gpu=False).device == "cpu"


def test_index_types_without_gpu_support_stay_on_cpu(rng, fake_gpu):
    index = VectorIndex(DIM, "HNSW32,Flat", use_gpu=True)
    index.upsert(np.arange(10), unit_vectors(rng, 10))
    assert index.device == "cpu"
    assert "cannot run on GPU" in index.describe()["gpu_unavailable_reason"]


def test_concurrent_upserts_removes_and_searches(rng):
    index = VectorIndex(DIM, "Flat", use_gpu=False)
    vectors = unit_vectors(rng, 800)
    errors: list[BaseException] = []

    def writer(offset):
        try:
            for start in range(offset, 800, 200):
                index.upsert(np.arange(start, start + 50), vectors[start:start + 50])
                index.remove(np.arange(start, start + 10))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def reader():
        try:
            for _ in range(200):
                scores, ids = index.search(vectors[:4], 5)
                assert ((ids == -1) | (ids >= 0)).all() and scores.shape == (4, 5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in range(0, 200, 50)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = sorted(i for s in range(0, 800, 50) for i in range(s + 10, s + 50))
    np.testing.assert_array_equal(index.ids(), expected)
    stored = {i: vectors[i] for i in expected}
    assert_matches_exact(index, stored, vectors[:10], 5)
