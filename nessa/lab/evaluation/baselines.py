"""The baselines fitted in the run: the anchor representation and the ridge / CCA maps
on the anchor corpus' paired chunks (as ``nessa.lab.train`` fits them)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from nessa import metrics
from nessa.kinds import KINDS
from nessa.lab.data import ROLE_FULL, FileEmbeddings
from nessa.lab.evaluation.embeddings import TRAIN_CHUNK_SEED
from nessa.lab.evaluation.systems import System, mean_vectors
from nessa.lab.linear import RidgeSolver, fit_cca
from nessa.lab.train import AlignmentConfig, build_dev_trials, cross_scores, regression_pairs, split_speakers
from speechcore.embedder import l2_normalise


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return l2_normalise(a) @ l2_normalise(b).T


def anchor_logit_system(anchor_enroll: np.ndarray, anchor_runtime: np.ndarray, name: str = "anchor_logit") -> System:
    """The anchor baseline: each side as its vector of cosines against the anchor speakers
    (enrollment side with the enrollment model's anchor embeddings, test side with the
    runtime model's), mean-centred, compared by cosine."""
    anchors_e, anchors_r = l2_normalise(anchor_enroll), l2_normalise(anchor_runtime)

    def build(enroll_groups, runtime_groups):
        profile_scores = mean_vectors(enroll_groups) @ anchors_e.T
        return lambda test_e, test_r: _centred_cosine(l2_normalise(test_r) @ anchors_r.T, profile_scores)

    return System(name, build)


def map_system(name: str, kind: str, params: dict) -> System:
    """Cross-model cosine through a KINDS transform (an in-run ridge / cca fit)."""
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}

    def build(enroll_groups, runtime_groups):
        profiles = l2_normalise(KINDS[kind].transform_target(params, mean_vectors(enroll_groups).astype(np.float64)))
        return lambda test_e, test_r: l2_normalise(
            KINDS[kind].transform_source(params, l2_normalise(test_r).astype(np.float64))) @ profiles.T

    return System(name, build)


@dataclasses.dataclass
class FittedMaps:
    ridge: dict
    cca: dict
    report: dict


def fit_in_run_maps(files: Sequence[FileEmbeddings], seed: int = TRAIN_CHUNK_SEED,
                    config: AlignmentConfig | None = None) -> FittedMaps:
    """Ridge and CCA on the anchor corpus' paired chunks, as ``nessa.lab.train`` fits them:
    hyper-parameter chosen on held-out speakers (lowest cross-model EER), refit on all."""
    config = config or AlignmentConfig()
    fit, dev = split_speakers([item.speaker for item in files], config.dev_fraction, seed)
    x_fit, y_fit = regression_pairs(files, set(fit), config.regression_target)
    x_all, y_all = regression_pairs(files, set(fit) | set(dev), config.regression_target)
    trials = build_dev_trials(files, set(dev))
    mask = trials.is_target

    def dev_eer(kind: str, params: dict) -> float:
        scores = cross_scores(kind, params, trials)
        return metrics.equal_error_rate(scores[mask], scores[~mask])[0]

    solver = RidgeSolver(x_fit, y_fit)
    ridge_table = [(dev_eer("ridge", solver.solve(a).params()), -a, a) for a in config.ridge_alphas]
    alpha = min(ridge_table)[2]
    cca_table = [(dev_eer("cca", fit_cca(x_fit, y_fit, config.cca_components, s).params()), -s, s)
                 for s in config.cca_shrinkages]
    shrinkage = min(cca_table)[2]
    report = {"ridge_relative_alpha": alpha, "cca_shrinkage": shrinkage, "cca_components": config.cca_components,
              "pairs": int(len(x_all)), "speakers": len(fit) + len(dev),
              "dev_cross_eer_percent": {"ridge": round(100 * min(ridge_table)[0], 3),
                                        "cca": round(100 * min(cca_table)[0], 3)}}
    return FittedMaps(ridge=RidgeSolver(x_all, y_all).solve(alpha).params(),
                      cca=fit_cca(x_all, y_all, config.cca_components, shrinkage).params(), report=report)


def anchor_vectors(files: Sequence[FileEmbeddings]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per anchor speaker: (enrollment-model, runtime-model) mean of its whole-utterance embeddings."""
    by_speaker: dict[str, tuple[list, list]] = {}
    for item in files:
        rows = item.plan.roles == ROLE_FULL
        if not rows.any():
            continue
        e, r = by_speaker.setdefault(item.speaker, ([], []))
        e.append(item.target[rows])
        r.append(item.source[rows])
    names = sorted(by_speaker)
    if not names:
        raise ValueError("no anchor speakers (no whole-utterance embeddings in the anchor corpus)")
    return (names, mean_vectors([np.concatenate(by_speaker[n][0]) for n in names]),
            mean_vectors([np.concatenate(by_speaker[n][1]) for n in names]))
