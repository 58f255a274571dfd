"""The pieces VectorIndex is built from, checked on their own: FAISS index building, input
checks and the numpy top-k helpers."""
from __future__ import annotations

import numpy as np
import pytest

from vectorindex.faiss_build import find_hnsw, new_index, supports_remove, training_points_needed
from vectorindex.inputs import database_ids, unit_vectors
from vectorindex.topk import drop_masked, exact_top_k


def test_new_index_applies_defaults_then_search_params():
    import faiss

    ivf = faiss.extract_index_ivf(new_index(8, "IVF16,Flat"))
    assert ivf.nprobe == 4  # round(sqrt(16))
    assert faiss.extract_index_ivf(new_index(8, "IVF16,Flat", "nprobe=9")).nprobe == 9
    assert find_hnsw(new_index(8, "HNSW8")).hnsw.efSearch == 64
    with pytest.raises(ValueError, match="cannot build FAISS index"):
        new_index(8, "NoSuchIndex")
    with pytest.raises(ValueError, match="do not apply"):
        new_index(8, "Flat", "nprobe=3")


def test_removal_support_and_training_minimum_follow_the_index_type():
    assert supports_remove(new_index(8, "Flat"))
    assert not supports_remove(new_index(8, "HNSW8"))
    assert training_points_needed(new_index(8, "IVF16,Flat")) == 39 * 16


def test_exact_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    q = unit_vectors(rng.standard_normal((3, 8)), 8, "queries")
    candidates = unit_vectors(rng.standard_normal((10, 8)), 8, "vectors")
    slots = np.arange(100, 110, dtype=np.int64)
    scores, found = exact_top_k(q, candidates, slots, 4)
    full = q @ candidates.T
    want = np.argsort(-full, axis=1)[:, :4]
    np.testing.assert_array_equal(found, slots[want])
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, axis=1), atol=1e-6)


def test_drop_masked_keeps_order_and_pads():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    labels = np.array([[5, 6, 7, 8]], dtype=np.int64)
    mask = np.array([[False, True, False, True]])
    kept_scores, kept = drop_masked(scores, labels, mask, 3)
    assert kept.tolist() == [[5, 7, -1]]
    assert kept_scores[0, :2].tolist() == pytest.approx([0.9, 0.7])


def test_inputs_become_private_unit_rows_and_checked_ids():
    original = np.array([[3.0, 4.0]])
    rows = unit_vectors(original, 2, "vectors")
    assert rows.dtype == np.float32 and rows.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]
    assert original.tolist() == [[3.0, 4.0]]  # the caller's array is untouched
    assert database_ids(np.array([3, 1], dtype=np.uint8), "ids", unique=True).dtype == np.int64
    with pytest.raises(ValueError, match="duplicates"):
        database_ids([1, 1], "ids", unique=True)
    with pytest.raises(ValueError, match="non-negative"):
        database_ids([-1], "ids", unique=False)
