"""Verification metrics (EER, minDCF) computed by speechbrain, plus open-set identification.

speechbrain's ``EER`` loops in Python over every distinct score (tens of seconds for a few
tens of thousands of trials) and its ``minDCF`` materialises a (thresholds x trials)
matrix (tens of gigabytes at that size). Both are therefore handed a *lossless* reduction
of the trial list: the same trials, with scores that cannot hold the optimum merged
(``_clip_to_eer_window``, ``_collapse_for_min_dcf``). speechbrain still computes the
figures, and they are exactly the ones it gives on the raw lists (tests check this).
"""
from __future__ import annotations

import numpy as np
import torch
from speechbrain.utils.metric_stats import EER, minDCF

DEFAULT_P_TARGET = 0.01


def _scores(scores) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("need at least one target and one non-target score")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite")
    return array


def _clip_to_eer_window(target_scores: np.ndarray, nontarget_scores: np.ndarray, keep: int):
    """Clip all scores to a window of ``keep`` distinct values either side of the EER point.

    Over the distinct scores taken as thresholds, FAR - FRR strictly decreases, so
    |FAR - FRR| falls to one minimum and rises after it; speechbrain picks that minimum.
    Clipping leaves FAR and FRR unchanged at every threshold inside the window and only
    removes thresholds outside it (the top one becomes "reject all", |FAR - FRR| = 1).
    """
    distinct = np.unique(np.concatenate([target_scores, nontarget_scores]))
    if len(distinct) <= 2 * keep + 1:
        return target_scores, nontarget_scores
    sorted_targets, sorted_nontargets = np.sort(target_scores), np.sort(nontarget_scores)
    frr = np.searchsorted(sorted_targets, distinct, side="right") / len(sorted_targets)
    far = 1.0 - np.searchsorted(sorted_nontargets, distinct, side="right") / len(sorted_nontargets)
    crossing = int(np.argmin(np.abs(far - frr)))
    low = distinct[max(0, crossing - keep)]
    high = distinct[min(len(distinct) - 1, crossing + keep)]
    return np.clip(target_scores, low, high), np.clip(nontarget_scores, low, high)


def equal_error_rate(target_scores, nontarget_scores, *, window: int = 1000) -> tuple[float, float]:
    """(EER as a fraction in [0, 1], threshold); accept means ``score > threshold``."""
    targets, nontargets = _clip_to_eer_window(_scores(target_scores), _scores(nontarget_scores), window)
    eer, threshold = EER(torch.from_numpy(targets), torch.from_numpy(nontargets))
    return float(eer), float(threshold)


def _collapse_for_min_dcf(target_scores: np.ndarray, nontarget_scores: np.ndarray):
    """Give every run of same-class scores (in sorted order) one shared value.

    Inside a run of non-targets with no target between them, the miss rate is constant
    and the false-alarm rate only falls as the threshold rises, so the best threshold in
    the run sits at its top: the run can take its maximum. Symmetrically a run of targets
    can take its minimum. Counts are untouched, so every candidate minimum of C_det (and
    its threshold, an original score or a midpoint between original scores) is kept,
    while the number of distinct thresholds drops to about four per target run.
    """
    scores = np.concatenate([target_scores, nontarget_scores])
    is_target = np.concatenate([np.ones(len(target_scores), bool), np.zeros(len(nontarget_scores), bool)])
    # Ties between classes must stay ties: sort by score, targets first among equals, so
    # that a run never spans a score shared with the other class in a way that moves it.
    order = np.lexsort((~is_target, scores))
    sorted_scores, sorted_labels = scores[order], is_target[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run_ends = np.r_[run_starts[1:], len(sorted_scores)]
    collapsed = np.empty_like(sorted_scores)
    for start, end in zip(run_starts, run_ends):
        collapsed[start:end] = sorted_scores[start] if sorted_labels[start] else sorted_scores[end - 1]
    return collapsed[sorted_labels], collapsed[~sorted_labels]


def min_dcf(target_scores, nontarget_scores, p_target: float = DEFAULT_P_TARGET) -> tuple[float, float]:
    """(minDCF with c_miss = c_fa = 1, threshold), unnormalised, exactly as speechbrain.

    Divide by ``min(p_target, 1 - p_target)`` for the usual normalised figure.
    """
    targets, nontargets = _collapse_for_min_dcf(_scores(target_scores), _scores(nontarget_scores))
    value, threshold = minDCF(torch.from_numpy(targets), torch.from_numpy(nontargets), p_target=p_target)
    return float(value), float(threshold)


def false_accept_rate(nontarget_scores, threshold: float) -> float:
    """Fraction of non-target scores that would be accepted (``score >= threshold``)."""
    nontargets = np.asarray(nontarget_scores, dtype=np.float64)
    return float(np.mean(nontargets >= threshold))


def false_reject_rate(target_scores, threshold: float) -> float:
    targets = np.asarray(target_scores, dtype=np.float64)
    return float(np.mean(targets < threshold))


def verification_summary(target_scores, nontarget_scores, p_target: float = DEFAULT_P_TARGET) -> dict:
    """EER (%), minDCF and trial counts, ready to store in an artifact."""
    eer, eer_threshold = equal_error_rate(target_scores, nontarget_scores)
    dcf, dcf_threshold = min_dcf(target_scores, nontarget_scores, p_target)
    return {"eer_percent": round(100.0 * eer, 4), "eer_threshold": eer_threshold,
            "min_dcf": round(dcf, 6), "min_dcf_normalised": round(dcf / min(p_target, 1.0 - p_target), 5),
            "min_dcf_p_target": p_target, "min_dcf_threshold": dcf_threshold,
            "n_target": int(np.size(target_scores)), "n_nontarget": int(np.size(nontarget_scores))}


def open_set_identification(score_matrix: np.ndarray, test_speakers, profile_speakers,
                            thresholds: dict[str, float]) -> dict:
    """Open-set identification against a gallery, leave-one-speaker-out for impostors.

    ``score_matrix[i, j]`` scores test ``i`` against profile ``j``. A genuine query is a test
    whose speaker has a profile: it counts as detected-and-identified (DIR) when the best
    profile is its own and scores at least the threshold. The same test with its own
    profile removed is an unknown-speaker query: it is a false alarm when the best
    remaining profile still reaches the threshold. Returns, per threshold name, DIR and
    the open-set false-alarm rate, plus the rank-1 accuracy and the gallery size.
    """
    scores = np.asarray(score_matrix, dtype=np.float64)
    test_speakers = np.asarray(test_speakers)
    profile_speakers = np.asarray(profile_speakers)
    own = test_speakers[:, None] == profile_speakers[None, :]
    has_profile = own.any(axis=1)
    scores, own = scores[has_profile], own[has_profile]
    best = scores.argmax(axis=1)
    correct = own[np.arange(len(scores)), best]
    best_score = scores[np.arange(len(scores)), best]
    best_impostor = np.where(own, -np.inf, scores).max(axis=1)
    result = {"gallery_size": int(len(profile_speakers)), "n_queries": int(len(scores)),
              "rank1_accuracy": round(float(correct.mean()), 5), "at_threshold": {}}
    for name, threshold in thresholds.items():
        result["at_threshold"][name] = {
            "detection_identification_rate": round(float(np.mean(correct & (best_score >= threshold))), 5),
            "open_set_false_alarm_rate": round(float(np.mean(best_impostor >= threshold)), 5),
        }
    return result
