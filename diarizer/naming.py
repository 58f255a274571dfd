"""Naming clusters against stored voice profiles: one-to-one, open set.

Each cluster centroid is scored against every gallery profile with the alignment
artifact's calibrated LLR: *fused* (runtime cosine + cross-model cosine) for profiles that
have a runtime-space vector, *cross* (aligned centroid vs enrollment vector) otherwise.
The Hungarian algorithm (scipy.optimize.linear_sum_assignment) then picks the assignment
with the largest total LLR among pairs above each path's threshold, so two clusters never
get the same person; clusters left without a person become ``unknown-1``, ``unknown-2``...
in order of first appearance.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


UNKNOWN_PREFIX = "unknown-"


@dataclasses.dataclass
class Gallery:
    """Profiles as arrays. ``runtime_vectors`` rows may be NaN (or the whole array None)
    for profiles without a runtime-space vector; those are scored on the cross path."""

    speaker_ids: Sequence
    enrollment_vectors: np.ndarray
    runtime_vectors: np.ndarray | None = None
    labels: Sequence[str] | None = None

    def __post_init__(self):
        self.speaker_ids = list(self.speaker_ids)
        self.enrollment_vectors = np.asarray(self.enrollment_vectors, dtype=np.float32)
        m = len(self.speaker_ids)
        if self.enrollment_vectors.ndim != 2 or len(self.enrollment_vectors) != m:
            raise ValueError(f"enrollment_vectors must be ({m}, dim), got {self.enrollment_vectors.shape}")
        if self.runtime_vectors is not None:
            self.runtime_vectors = np.asarray(self.runtime_vectors, dtype=np.float32)
            if self.runtime_vectors.ndim != 2 or len(self.runtime_vectors) != m:
                raise ValueError(f"runtime_vectors must be ({m}, dim), got {self.runtime_vectors.shape}")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if len(self.labels) != m:
                raise ValueError("labels must have one entry per speaker id")
        if len(set(map(str, self.speaker_ids))) != m:
            raise ValueError("speaker_ids must be unique")

    def __len__(self) -> int:
        return len(self.speaker_ids)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None else str(self.speaker_ids[index])

    def restrict(self, candidates: Iterable | None) -> "Gallery":
        """Only the given speaker ids (unknown ids are ignored)."""
        if candidates is None:
            return self
        wanted = {str(c) for c in candidates}
        keep = [i for i, sid in enumerate(self.speaker_ids) if str(sid) in wanted]
        return Gallery([self.speaker_ids[i] for i in keep], self.enrollment_vectors[keep],
                       None if self.runtime_vectors is None else self.runtime_vectors[keep],
                       None if self.labels is None else [self.labels[i] for i in keep])


@dataclasses.dataclass
class ClusterName:
    label: str
    speaker_id: object | None
    #: LLR of the assigned person; for unknowns the best (rejected) LLR; None without gallery
    score: float | None
    threshold: float | None = None
    path: str | None = None


def score_matrix(artifact, runtime_centroids: np.ndarray, gallery: Gallery
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LLR, threshold, fused?) matrices of shape (clusters, profiles), scored by the
    artifact exactly as identification scores a query (`score_candidates`): fused where the
    profile has a runtime vector (rows of NaN: none), the alignment alone otherwise."""
    runtime = gallery.runtime_vectors
    scorer = artifact.scorer
    llr, fused = scorer.score_candidates(np.atleast_2d(runtime_centroids), gallery.enrollment_vectors, runtime)
    llr = np.atleast_2d(np.asarray(llr, dtype=np.float64))
    fused_mask = np.broadcast_to(np.asarray(fused, dtype=bool)[None, :], llr.shape).copy()
    thresholds = np.where(fused_mask, scorer.candidate_threshold(fused=True), scorer.candidate_threshold(fused=False))
    return llr, thresholds, fused_mask


def name_clusters(artifact, runtime_centroids: np.ndarray, gallery: Gallery | None,
                  candidates: Iterable | None = None) -> list[ClusterName]:
    """One ClusterName per centroid row (clusters must be in order of first appearance)."""
    k = len(runtime_centroids)
    assigned: dict[int, ClusterName] = {}
    best: dict[int, tuple[float, float, bool]] = {}
    if gallery is not None:
        gallery = gallery.restrict(candidates)
    if gallery is not None and len(gallery) and k:
        llr, thresholds, fused = score_matrix(artifact, np.asarray(runtime_centroids), gallery)
        margin = llr - thresholds
        # maximise the total LLR over accepted pairs only
        gain = np.where(margin >= 0, llr - llr.min() + 1.0, 0.0)
        rows, cols = linear_sum_assignment(gain, maximize=True)
        for row, col in zip(rows, cols):
            if margin[row, col] >= 0:
                assigned[row] = ClusterName(gallery.label(col), gallery.speaker_ids[col],
                                            float(llr[row, col]), float(thresholds[row, col]),
                                            "fused" if fused[row, col] else "cross")
        for row in range(k):
            col = int(np.argmax(margin[row]))
            best[row] = (float(llr[row, col]), float(thresholds[row, col]), bool(fused[row, col]))
    names, unknown = [], 0
    for row in range(k):
        if row in assigned:
            names.append(assigned[row])
            continue
        unknown += 1
        if row in best:
            score, threshold, was_fused = best[row]
            names.append(ClusterName(f"{UNKNOWN_PREFIX}{unknown}", None, score, threshold,
                                     "fused" if was_fused else "cross"))
        else:
            names.append(ClusterName(f"{UNKNOWN_PREFIX}{unknown}", None, None))
    return names
