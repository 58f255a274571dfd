"""Adaptive symmetric score normalisation (S-norm) against a cohort of speakers.

Each side of a trial is z-normalised by the mean and sd of its ``top_k`` highest scores
against the cohort, and the two z-scores are averaged (as wespeaker's score_norm.py).
"""
from __future__ import annotations

import numpy as np


def top_k_stats(cohort_scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each row's ``top_k`` highest cohort scores."""
    k = max(1, min(int(top_k), cohort_scores.shape[1]))
    top = np.partition(cohort_scores, cohort_scores.shape[1] - k, axis=1)[:, -k:]
    mean = top.sum(axis=1) / k
    centred = top - mean[:, None]
    return mean, np.sqrt(np.einsum("ij,ij->i", centred, centred) / k) + 1e-6


def snorm_with_stats(scores: np.ndarray, query_stats, profile_stats) -> np.ndarray:
    """``scores`` (N, M) normalised by each query's and each profile's (mean, sd)."""
    (mean_q, sd_q), (mean_p, sd_p) = query_stats, profile_stats
    return 0.5 * ((scores - mean_q[:, None]) / sd_q[:, None] + (scores - mean_p[None, :]) / sd_p[None, :])


def adaptive_snorm(scores: np.ndarray, query_cohort: np.ndarray, profile_cohort: np.ndarray,
                   top_k: int) -> np.ndarray:
    """``scores`` (N, M); ``query_cohort`` (N, C) and ``profile_cohort`` (M, C) each side's
    scores against the cohort."""
    return snorm_with_stats(scores, top_k_stats(query_cohort, top_k), top_k_stats(profile_cohort, top_k))
