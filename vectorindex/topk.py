"""Top-k result arrays computed with numpy, where FAISS cannot give them directly: exact
scoring of a small candidate set, and dropping tombstoned labels from an over-fetch."""
from __future__ import annotations

import numpy as np


def empty_result(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64)


def exact_top_k(q: np.ndarray, candidates: np.ndarray, slots: np.ndarray, k: int):
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


def drop_masked(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int):
    """Per row, keep the first k results whose mask is False (order preserved), -1 padded."""
    labels = np.where(mask, -1, labels)
    keep = labels >= 0
    # stable sort puts kept entries first in their original (score) order
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)
