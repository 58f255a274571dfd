"""Fitting calibrations on trials: prior-weighted logistic regression and operating thresholds.

The regression is that of the BOSARIS toolkit (Brummer), so that ``weights . features +
bias`` is a log-likelihood ratio: targets and non-targets are weighted by the training
prior, and its log-odds are subtracted from the fitted logit.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from nessa import metrics
from nessa.calibration import FAR_TARGETS, LogisticCalibration


def fit_logistic_calibration(target_features: np.ndarray, nontarget_features: np.ndarray,
                             feature_names: tuple[str, ...], *, prior: float = 0.5,
                             l2: float = 1e-4, target_weights=None, nontarget_weights=None) -> LogisticCalibration:
    """Fit ``llr = w . f + b`` on target / non-target trials (rows are trials, columns features).

    The small L2 penalty on ``w`` keeps the weights finite when the classes separate
    perfectly (a separable training set would otherwise push them to infinity).
    ``target_weights`` / ``nontarget_weights``: optional per-trial weights within each class
    (normalised to the class; default equal), e.g. to give a rare kind of trial more say.
    """
    targets = np.asarray(target_features, dtype=np.float64).reshape(len(target_features), -1)
    nontargets = np.asarray(nontarget_features, dtype=np.float64).reshape(len(nontarget_features), -1)
    n_features = targets.shape[1]
    if nontargets.shape[1] != n_features or len(feature_names) != n_features:
        raise ValueError("feature counts of targets, non-targets and names differ")
    if len(targets) == 0 or len(nontargets) == 0:
        raise ValueError("calibration needs target and non-target trials")
    prior_logit = math.log(prior / (1.0 - prior))
    # Standardise for a well-conditioned optimisation; undone on the way out.
    pooled = np.concatenate([targets, nontargets])
    centre, scale = pooled.mean(axis=0), np.maximum(pooled.std(axis=0), 1e-12)
    zt, zn = (targets - centre) / scale, (nontargets - centre) / scale
    at, an = _class_weights(target_weights, len(zt)), _class_weights(nontarget_weights, len(zn))

    def objective(params):
        w, b = params[:-1], params[-1]
        logit_t = zt @ w + b + prior_logit
        logit_n = zn @ w + b + prior_logit
        # Cross-entropy weighted so that each class carries its prior, whatever its count.
        loss = -prior * float(at @ log_expit(logit_t)) - (1 - prior) * float(an @ log_expit(-logit_n))
        grad_t = -prior * (1.0 - expit(logit_t)) * at
        grad_n = (1 - prior) * expit(logit_n) * an
        grad_w = zt.T @ grad_t + zn.T @ grad_n + 2 * l2 * w
        grad_b = grad_t.sum() + grad_n.sum()
        return loss + l2 * float(w @ w), np.concatenate([grad_w, [grad_b]])

    start = np.zeros(n_features + 1)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-10})
    w_std, b_std = result.x[:-1], result.x[-1]
    weights = w_std / scale
    bias = b_std - float(centre @ weights)
    return LogisticCalibration(features=tuple(feature_names), weights=tuple(float(w) for w in weights),
                               bias=float(bias), training_prior=prior)


def _class_weights(weights, n: int) -> np.ndarray:
    """Per-trial weights of one class summing to 1 (equal when ``weights`` is None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("trial weights must be one non-negative value per trial, not all zero")
    return weights / weights.sum()


def far_threshold(nontarget_scores, far: float) -> float:
    """The lowest threshold that at most a fraction ``far`` of the non-targets reach.

    Accept means ``score >= threshold``. The threshold lies midway between the last
    accepted and the first rejected non-target, so it does not sit on a training score.
    """
    scores = np.sort(np.asarray(nontarget_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(far * len(scores) + 1e-9))
    if allowed <= 0:
        return float(np.nextafter(scores[0], np.inf))
    if allowed >= len(scores):
        return float(scores[-1])
    # Ties at the boundary would admit more than `allowed`; step above them.
    boundary = scores[allowed]
    above = scores[scores > boundary]
    if len(above) == 0:
        return float(np.nextafter(boundary, np.inf))
    return float((above[-1] + boundary) / 2.0)


def operating_thresholds(target_scores, nontarget_scores) -> dict:
    """LLR thresholds for FAR 1 %, FAR 0.1 % and the EER point, from dev trials."""
    thresholds = {name: far_threshold(nontarget_scores, far) for name, far in FAR_TARGETS.items()}
    _, eer_threshold = metrics.equal_error_rate(target_scores, nontarget_scores)
    # speechbrain accepts `score > t`; nudge up so that `score >= t` means the same.
    thresholds["eer"] = float(np.nextafter(eer_threshold, np.inf))
    return thresholds


def fit_on_trials(features, is_target: np.ndarray, feature_names: tuple[str, ...], *, prior: float = 0.5,
                  default_threshold: str = "far_0.1pct") -> tuple[LogisticCalibration, np.ndarray]:
    """A calibration fitted on a trial matrix (each feature an array shaped like the boolean
    ``is_target``), with its operating thresholds on the same trials; and its LLRs there."""
    mask = np.asarray(is_target, dtype=bool)
    table = np.stack([np.asarray(f).ravel() for f in features], axis=1)
    calibration = fit_logistic_calibration(table[mask.ravel()], table[~mask.ravel()], tuple(feature_names),
                                           prior=prior)
    llr = calibration.llr(*features)
    return calibration.with_thresholds(operating_thresholds(llr[mask], llr[~mask]), default_threshold), llr


def threshold_report(calibration: LogisticCalibration, target_llr, nontarget_llr) -> dict:
    """Empirical FAR / FRR of each stored threshold on the given trials."""
    return {name: {"llr": value,
                   "far": round(metrics.false_accept_rate(nontarget_llr, value), 6),
                   "frr": round(metrics.false_reject_rate(target_llr, value), 6)}
            for name, value in calibration.thresholds.items()}


def cllr(target_llr, nontarget_llr) -> float:
    """Log-likelihood-ratio cost in bits: 0 is perfect, 1 is an uninformative system."""
    targets = np.asarray(target_llr, dtype=np.float64)
    nontargets = np.asarray(nontarget_llr, dtype=np.float64)
    return float((np.mean(-log_expit(targets)) + np.mean(-log_expit(-nontargets))) / (2 * math.log(2)))
