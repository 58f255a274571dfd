"""The two protocols (all pairs; profiles over seeded draws) and their figures: EER,
minDCF, top-1 identification and the fraction of the runtime -> enrollment gap recovered."""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from nessa import metrics
from nessa.lab.evaluation.embeddings import EvalEmbeddings
from nessa.lab.evaluation.systems import SecondsScorer, System

DEFAULT_DRAWS = 5
DEFAULT_ENROLL_UTTERANCES = 3
P_TARGET = metrics.DEFAULT_P_TARGET
#: gain recovered is reported only where runtime_sym - enroll_sym >= this many EER points
MIN_GAIN_GAP_POINTS = 0.5


@dataclasses.dataclass
class Trials:
    """Scores of one (system, condition, protocol), pooled over draws for plotting."""

    targets: list[np.ndarray]
    nontargets: list[np.ndarray]


def _groups(matrix: np.ndarray, members: list[np.ndarray]) -> list[np.ndarray]:
    return [matrix[rows] for rows in members]


def profile_draws(speakers: np.ndarray, n_enroll: int, draws: int, seed: int) -> list[list[np.ndarray]]:
    """Per draw, per speaker (sorted), the row indices of its ``n_enroll`` profile utterances."""
    names = sorted(set(speakers.tolist()))
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, 104729, draw])
        members = []
        for name in names:
            rows = np.flatnonzero(speakers == name)
            members.append(np.sort(rng.choice(rows, size=min(n_enroll, len(rows)), replace=False)))
        out.append(members)
    return out


def verification_figures(targets, nontargets) -> tuple[float, float]:
    """(EER in percent, minDCF at P_TARGET normalised by it), computed by speechbrain."""
    eer = metrics.equal_error_rate(targets, nontargets)[0]
    dcf = metrics.min_dcf(targets, nontargets, P_TARGET)[0] / min(P_TARGET, 1.0 - P_TARGET)
    return 100.0 * eer, dcf


def _score(scorer, test_e, test_r, seconds):
    return scorer(test_e, test_r, seconds) if isinstance(scorer, SecondsScorer) else scorer(test_e, test_r)


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return float("nan"), None
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def run_all_pairs(system: System, data: EvalEmbeddings, condition: str) -> tuple[dict, Trials]:
    n = len(data.speakers)
    members = [np.array([i]) for i in range(n)]
    scorer = system.build(_groups(data.enroll_full, members), _groups(data.runtime_full, members))
    test_e, test_r = data.tests[condition]
    seconds = None if data.test_seconds is None else data.test_seconds.get(condition)
    scores = np.asarray(_score(scorer, test_e, test_r, seconds), dtype=np.float64)  # (tests, enrolled)
    same = data.speakers[:, None] == data.speakers[None, :]
    valid = ~np.eye(n, dtype=bool)
    targets, nontargets = scores[same & valid], scores[~same & valid]
    eer, dcf = verification_figures(targets, nontargets)
    row = {"eer": eer, "min_dcf": dcf, "eer_sd": None, "min_dcf_sd": None, "top1": None, "top1_sd": None,
           "top1_at_threshold": None, "n_target": int(targets.size), "n_nontarget": int(nontargets.size)}
    return row, Trials([targets], [nontargets])


def run_profile(system: System, data: EvalEmbeddings, condition: str,
                draws: list[list[np.ndarray]]) -> tuple[dict, Trials]:
    names = np.asarray(sorted(set(data.speakers.tolist())))
    test_e, test_r = data.tests[condition]
    eers, dcfs, top1s, top1_thr = [], [], [], []
    trials = Trials([], [])
    n_target = n_nontarget = 0
    for members in draws:
        scorer = system.build(_groups(data.enroll_full, members), _groups(data.runtime_full, members))
        used = np.zeros(len(data.speakers), dtype=bool)
        used[np.concatenate(members)] = True
        rows = np.flatnonzero(~used)
        seconds = None if data.test_seconds is None else data.test_seconds.get(condition)
        scores = np.asarray(_score(scorer, test_e[rows], test_r[rows], None if seconds is None else seconds[rows]),
                            dtype=np.float64)  # (tests, profiles)
        truth = data.speakers[rows][:, None] == names[None, :]
        targets, nontargets = scores[truth], scores[~truth]
        eer, dcf = verification_figures(targets, nontargets)
        eers.append(eer)
        dcfs.append(dcf)
        thresholds = {} if system.threshold is None else {"system": system.threshold}
        ident = metrics.open_set_identification(scores, data.speakers[rows], names, thresholds)
        top1s.append(100.0 * ident["rank1_accuracy"])
        if system.threshold is not None:
            top1_thr.append(100.0 * ident["at_threshold"]["system"]["detection_identification_rate"])
        trials.targets.append(targets)
        trials.nontargets.append(nontargets)
        n_target, n_nontarget = int(targets.size), int(nontargets.size)
    eer, eer_sd = _mean_sd(eers)
    dcf, dcf_sd = _mean_sd(dcfs)
    top1, top1_sd = _mean_sd(top1s)
    row = {"eer": eer, "min_dcf": dcf, "eer_sd": eer_sd, "min_dcf_sd": dcf_sd, "top1": top1, "top1_sd": top1_sd,
           "top1_at_threshold": _mean_sd(top1_thr)[0] if top1_thr else None,
           "n_target": n_target, "n_nontarget": n_nontarget}
    return row, trials


def not_run_row() -> dict:
    """The row of a system that is not run under a protocol (shown as "–")."""
    return {"eer": float("nan"), "min_dcf": float("nan"), "eer_sd": None, "min_dcf_sd": None, "top1": None,
            "top1_sd": None, "top1_at_threshold": None, "n_target": 0, "n_nontarget": 0}


def gain_recovered(eer_runtime: float, eer_enroll: float, eer_system: float,
                   min_gap: float = MIN_GAIN_GAP_POINTS) -> float | None:
    """(EER_runtime_sym - EER_x) / (EER_runtime_sym - EER_enroll_sym), EERs in percent;
    None when the gap is below ``min_gap`` points (the ratio would be noise)."""
    gap = eer_runtime - eer_enroll
    if not np.isfinite(gap) or gap < min_gap:
        return None
    return float((eer_runtime - eer_system) / gap)
