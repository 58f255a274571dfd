"""Clustering window embeddings into speakers.

Two methods, both deterministic:

* ``ahc``: agglomerative clustering, cosine distance, average linkage (scipy), cut at a
  distance threshold; speaker-count hints re-cut the same dendrogram at a cluster count.
* ``spectral``: the number of speakers is estimated from the eigengap of the normalised
  Laplacian of a pruned cosine affinity (as in NME-SC, Park et al. 2019, and the
  counting-over-thresholds argument of CYS-MSD), then the rows of the spectral embedding
  are clustered with k-means (fixed seed, several restarts).

``merge_clusters`` then joins near-duplicate clusters (one voice split in two).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import kmeans2
from scipy.linalg import eigh
from scipy.sparse.linalg import eigsh
from scipy.spatial.distance import pdist

from speechcore.embedder import l2_normalise

METHODS = ("ahc", "spectral")


class HintError(ValueError):
    """Inconsistent speaker-count hints (maps onto HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class SpeakerHints:
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def bounds(self, n_items: int, default_max: int) -> tuple[int, int]:
        """(low, high) speaker count allowed for n_items windows."""
        if self.num_speakers is not None:
            k = min(self.num_speakers, n_items)
            return k, k
        low = self.min_speakers or 1
        high = self.max_speakers or max(default_max, low)
        return min(low, n_items), max(1, min(high, n_items))


def validate_hints(num_speakers=None, min_speakers=None, max_speakers=None) -> SpeakerHints:
    """Check speaker-count hints; raises HintError (a ValueError) with a clear message."""
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                        ("max_speakers", max_speakers)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise HintError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise HintError(f"{name} must be at least 1, got {value}")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise HintError(f"min_speakers ({min_speakers}) is greater than max_speakers ({max_speakers})")
    if num_speakers is not None:
        if min_speakers is not None and num_speakers < min_speakers:
            raise HintError(f"num_speakers ({num_speakers}) is less than min_speakers ({min_speakers})")
        if max_speakers is not None and num_speakers > max_speakers:
            raise HintError(f"num_speakers ({num_speakers}) is greater than max_speakers ({max_speakers})")
    return SpeakerHints(None if num_speakers is None else int(num_speakers),
                        None if min_speakers is None else int(min_speakers),
                        None if max_speakers is None else int(max_speakers))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _relabel_by_first_occurrence(labels: np.ndarray) -> np.ndarray:
    mapping: dict[int, int] = {}
    return np.array([mapping.setdefault(int(label), len(mapping)) for label in labels], dtype=int)


def ahc(embeddings: np.ndarray, threshold: float, low: int = 1, high: int | None = None
        ) -> tuple[np.ndarray, dict]:
    """Average-linkage cosine AHC cut at ``threshold`` (cosine distance), clamped to [low, high]."""
    x = _unit(embeddings)
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=int), {"threshold_count": 1}
    tree = linkage(pdist(x, metric="cosine"), method="average")
    labels = fcluster(tree, t=threshold, criterion="distance")
    count = int(labels.max())
    high = n if high is None else high
    if count < low or count > high:
        labels = fcluster(tree, t=min(max(count, low), high), criterion="maxclust")
    return _relabel_by_first_occurrence(labels - 1), {"threshold_count": count}


def affinity_matrix(embeddings: np.ndarray, pruning: float = 0.0, max_keep: int | None = None) -> np.ndarray:
    """Cosine affinity in [0, 1]; with pruning p each row keeps its top (1 - p) share
    (at most ``max_keep`` neighbours: long recordings with many speakers)."""
    x = _unit(embeddings)
    affinity = np.clip(x @ x.T, 0.0, 1.0)
    n = len(x)
    if pruning > 0 and n > 2:
        keep = max(2, int(round(n * (1.0 - pruning))))
        if max_keep is not None:
            keep = max(2, min(keep, max_keep))
        order = np.argsort(-affinity, axis=1)
        pruned = np.zeros_like(affinity)
        rows = np.arange(n)[:, None]
        pruned[rows, order[:, :keep]] = affinity[rows, order[:, :keep]]
        affinity = 0.5 * (pruned + pruned.T)
    return affinity


def _normalised_affinity(affinity: np.ndarray) -> np.ndarray:
    inv_sqrt = 1.0 / np.sqrt(np.maximum(affinity.sum(axis=1), 1e-12))
    return inv_sqrt[:, None] * affinity * inv_sqrt[None, :]


def _top_eigen(normalised: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenpairs of D^-1/2 A D^-1/2, largest first. The normalised
    Laplacian's smallest eigenvalues are 1 minus these."""
    n = len(normalised)
    count = min(count, n)
    if n > 300 and count < n - 1:
        # ARPACK on large matrices: about 10x faster than a dense solver; a fixed start
        # vector keeps it deterministic
        values, vectors = eigsh(normalised, k=count, which="LA", v0=np.ones(n) / np.sqrt(n))
        order = np.argsort(-values)
        return values[order], vectors[:, order]
    values, vectors = eigh(normalised, subset_by_index=[n - count, n - 1])
    return values[::-1], vectors[:, ::-1]


def eigengap_count(affinity: np.ndarray, low: int = 1, high: int = 8
                   ) -> tuple[int, np.ndarray, np.ndarray]:
    """Speaker count from the largest eigengap of the symmetric normalised Laplacian;
    returns the count, the Laplacian's smallest eigenvalues and their eigenvectors."""
    n = len(affinity)
    high = max(low, min(high, n - 1)) if n > 1 else 1
    mu, vectors = _top_eigen(_normalised_affinity(affinity), high + 1)
    eigenvalues = 1.0 - mu
    if low >= high:
        return low, eigenvalues, vectors
    gaps = np.diff(eigenvalues)  # gaps[k-1] = lambda_{k+1} - lambda_k (1-based k)
    candidates = np.arange(low, high + 1)
    return int(candidates[np.argmax(gaps[candidates - 1])]), eigenvalues, vectors


#: keep fractions tried by ``pruning="auto"`` (NME-SC style selection)
AUTO_KEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def _auto_pruning(x: np.ndarray, low: int, high: int):
    """NME-SC (Park et al. 2019): pick the pruning whose largest eigengap is biggest
    relative to the share of neighbours kept (minimise keep / gap)."""
    best = None
    for keep in AUTO_KEEP:
        affinity = affinity_matrix(x, 1.0 - keep)
        k, eigenvalues, vectors = eigengap_count(affinity, low, high)
        gaps = np.diff(eigenvalues)
        gap = float(gaps[k - 1]) if len(gaps) >= k else 0.0
        ratio = keep / max(gap, 1e-6)
        if best is None or ratio < best[0]:
            best = (ratio, 1.0 - keep, k, eigenvalues, vectors)
    return best[1:]


def spectral(embeddings: np.ndarray, low: int = 1, high: int = 8, pruning: float | str = 0.0,
             seed: int = 0, restarts: int = 10, max_keep: int | None = None) -> tuple[np.ndarray, dict]:
    """Eigengap speaker count, then k-means on the normalised spectral embedding.
    ``pruning``: share of each row's affinities dropped, or "auto"."""
    x = _unit(embeddings)
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=int), {"eigengap_count": 1}
    if pruning == "auto":
        pruning, k, eigenvalues, vectors = _auto_pruning(x, low, high)
    else:
        k, eigenvalues, vectors = eigengap_count(affinity_matrix(x, pruning, max_keep), low, high)
    info = {"eigengap_count": k, "pruning": round(float(pruning), 3),
            "eigenvalues": [round(float(v), 4) for v in eigenvalues[:10]]}
    if k <= 1:
        return np.zeros(n, dtype=int), info
    labels = _kmeans(_unit(vectors[:, :k]), k, seed, restarts)
    return _relabel_by_first_occurrence(labels), info


def _kmeans(x: np.ndarray, k: int, seed: int, restarts: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centroids, labels = kmeans2(x, k, minit="++", seed=rng, iter=30)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if len(np.unique(labels)) == k and inertia < best_inertia:
            best, best_inertia = labels, inertia
    if best is None:  # degenerate data: fall back to AHC at k
        best = fcluster(linkage(x, method="ward"), t=k, criterion="maxclust") - 1
    return np.asarray(best, dtype=int)


def cluster(embeddings: np.ndarray, method: str, hints: SpeakerHints, *, threshold: float,
            max_speakers_default: int = 8, pruning: float | str = 0.0, seed: int = 0,
            max_items: int = 1500, max_keep: int | None = None) -> tuple[np.ndarray, dict]:
    """Labels 0..k-1 (numbered by first occurrence) for each row, and diagnostics.

    More than ``max_items`` rows (long recordings): an evenly spaced subset is clustered
    (both methods are cubic/quadratic in the rows) and every row then joins the cluster
    with the nearest centroid."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; known: {METHODS}")
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int), {}
    if n > max_items:
        subset = np.unique(np.linspace(0, n - 1, max_items).round().astype(int))
        sub_labels, info = cluster(embeddings[subset], method, hints, threshold=threshold,
                                   max_speakers_default=max_speakers_default, pruning=pruning,
                                   seed=seed, max_items=max_items, max_keep=max_keep)
        x = _unit(embeddings)
        centroids = _unit(np.stack([x[subset][sub_labels == c].mean(axis=0)
                                    for c in range(int(sub_labels.max()) + 1)]))
        labels = _relabel_by_first_occurrence(np.argmax(x @ centroids.T, axis=1))
        info.update(subsampled=len(subset), count=int(labels.max()) + 1)
        return labels, info
    low, high = hints.bounds(n, max_speakers_default)
    if method == "ahc":
        labels, info = ahc(embeddings, threshold, low, high)
    else:
        labels, info = spectral(embeddings, low, high, pruning=pruning, seed=seed, max_keep=max_keep)
        # the threshold-only count, kept as a baseline for count-estimation accuracy
        info["threshold_count"] = ahc(embeddings, threshold)[1]["threshold_count"]
    info.update(method=method, count=int(labels.max()) + 1, bounds=[low, high])
    return labels, info


def merge_clusters(feats: np.ndarray, labels: np.ndarray, threshold: float, low: int,
                   relative: float | None = None):
    """Merge the two clusters with the most similar centroids while their cosine > threshold
    (and, with ``relative``, > relative x the pair's mean window-to-own-centroid cosine)."""
    labels = labels.copy()
    merged = 0
    while True:
        ids = np.unique(labels)
        if len(ids) <= max(1, low):
            break
        centroids = l2_normalise(np.stack([feats[labels == c].mean(axis=0) for c in ids]))
        sim = centroids @ centroids.T
        np.fill_diagonal(sim, -np.inf)
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] <= threshold:
            break
        if relative is not None:
            within = [float((l2_normalise(feats[labels == ids[m]]) @ centroids[m]).mean()) for m in (i, j)]
            if sim[i, j] <= relative * float(np.mean(within)):
                break
        labels[labels == ids[j]] = ids[i]
        merged += 1
    if merged:
        labels = _relabel_by_first_occurrence(labels)
    return labels, merged
