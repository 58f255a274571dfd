"""Checking what callers hand VectorIndex: options, k, ids as non-negative int64, vectors as
private unit-length float32 copies. Every problem is a ValueError that names the argument."""
from __future__ import annotations

import numpy as np


def check_index_options(dim, factory, exact_restrict_max) -> None:
    """What VectorIndex's constructor is given, before any of it reaches FAISS."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a FAISS index_factory string, got {factory!r}")
    if isinstance(exact_restrict_max, bool) or not isinstance(exact_restrict_max, (int, np.integer)) \
            or exact_restrict_max < 0:
        raise ValueError(f"exact_restrict_max must be a non-negative integer, got {exact_restrict_max!r}")


def positive_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def unit_vectors(values, dim: int, what: str) -> np.ndarray:
    """``values`` as an (n, dim) C-contiguous float32 array of unit rows that nobody else holds."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}) or ({dim},), "
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


def database_ids(values, what: str, *, unique: bool) -> np.ndarray:
    """``values`` as a 1-D int64 array of non-negative ids (-1 is reserved for "no result")."""
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


def check_same_length(ids: np.ndarray, vecs: np.ndarray) -> None:
    if len(ids) != len(vecs):
        raise ValueError(f"got {len(ids)} ids for {len(vecs)} vectors")
