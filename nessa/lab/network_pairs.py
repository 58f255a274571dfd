"""Training pairs of an alignment network and the params derived from them: the linear
initialisation, the fixed CCA branch and the S-norm cohort."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from nessa.lab.data import ROLE_FULL, FileEmbeddings
from nessa.lab.linear import RidgeSolver, fit_cca
from nessa.lab.network_config import PAIR_ROLES, NetworkConfig
from nessa.lab.network_init import cca_branch_params, cca_init, ridge_init
from speechcore.embedder import l2_normalise


@dataclasses.dataclass
class PairSet:
    x: np.ndarray          # (n, source_dim) float32, L2-normalised
    y: np.ndarray          # (n, target_dim) float32, L2-normalised
    speaker: np.ndarray    # (n,) int, index into ``speakers``
    speakers: list         # names
    speaker_weight: np.ndarray  # (n_speakers,) sampling weight (domain weight)
    domain: np.ndarray | None = None  # (n,) corpus domain of each pair, where known
    seconds: np.ndarray | None = None  # (n,) segment length of each pair, where known


def build_pairs(files: Sequence[FileEmbeddings], domains: dict[str, str], speakers: set[str],
                config: NetworkConfig) -> PairSet:
    """Pairs of the given speakers; ``domains`` maps a file path to its corpus domain."""
    roles = PAIR_ROLES[config.pair_roles]
    xs, ys, labels, names, weights, row_domains, row_seconds = [], [], [], {}, {}, [], []
    for item in files:
        if item.speaker not in speakers:
            continue
        weight = config.domain_weight(domains[item.path])
        if weight <= 0:
            continue
        rows = np.isin(item.plan.roles, roles)
        index = names.setdefault(item.speaker, len(names))
        weights[index] = weight
        xs.append(item.source[rows])
        ys.append(item.target[rows])
        labels.append(np.full(int(rows.sum()), index))
        row_domains.append(np.full(int(rows.sum()), domains[item.path], dtype=object))
        row_seconds.append(item.plan.seconds[rows])
    if not xs:
        raise ValueError("no training pairs")
    return PairSet(x=l2_normalise(np.concatenate(xs).astype(np.float32)),
                   y=l2_normalise(np.concatenate(ys).astype(np.float32)),
                   speaker=np.concatenate(labels), speakers=list(names),
                   speaker_weight=np.array([weights[i] for i in range(len(names))], dtype=np.float64),
                   domain=np.concatenate(row_domains).astype(str), seconds=np.concatenate(row_seconds))


def initial_params(config: NetworkConfig, pairs: PairSet) -> dict:
    if config.init_domain:
        if pairs.domain is None or not (pairs.domain == config.init_domain).any():
            raise ValueError(f"init_domain {config.init_domain!r}: no training pairs from that domain")
        rows = pairs.domain == config.init_domain
        pairs = dataclasses.replace(pairs, x=pairs.x[rows], y=pairs.y[rows], speaker=pairs.speaker[rows],
                                    domain=pairs.domain[rows])
    if config.init == "ridge":
        return ridge_init(RidgeSolver(pairs.x, pairs.y).solve(config.ridge_alpha).params())
    if config.init == "cca":
        return cca_init(fit_cca(pairs.x, pairs.y, config.shared_dim, config.cca_shrinkage).params(),
                        np.maximum(pairs.x.std(axis=0), 1e-8), np.maximum(pairs.y.std(axis=0), 1e-8))
    init = {"x_mean": pairs.x.mean(axis=0), "x_scale": np.maximum(pairs.x.std(axis=0), 1e-8),
            "y_mean": pairs.y.mean(axis=0)}
    if config.arch == "twotower":
        init["y_scale"] = np.maximum(pairs.y.std(axis=0), 1e-8)
    return init


def segment_pairs(files: Sequence[FileEmbeddings], speakers: set[str], pair_roles: str) -> tuple[np.ndarray, np.ndarray]:
    """(runtime, enrollment) float64 embeddings of the ``PAIR_ROLES[pair_roles]`` segments of
    ``speakers`` in ``files``, unnormalised (as ``nessa.lab.train.regression_pairs`` gives them)."""
    roles = PAIR_ROLES[pair_roles]
    chosen = [(item, np.isin(item.plan.roles, roles)) for item in files if item.speaker in speakers]
    return (np.concatenate([item.source[rows] for item, rows in chosen]).astype(np.float64),
            np.concatenate([item.target[rows] for item, rows in chosen]).astype(np.float64))


def add_cca_branch(params: dict, files: Sequence[FileEmbeddings], speakers: set[str], config: NetworkConfig,
                   n_components: int) -> dict:
    """nn-twotower params plus the linear CCA branch, fitted on the ``config.cca_branch_pairs``
    segments of ``speakers`` in ``files`` ("chunks": the pairs ``nessa.lab.train`` fits its CCA on)."""
    if not config.cca_branch:
        return params
    x, y = segment_pairs(files, speakers, config.cca_branch_pairs)
    cca = fit_cca(x, y, n_components, config.cca_branch_shrinkage).params()
    return {**params, **{k: np.asarray(v, dtype=np.float32)
                         for k, v in cca_branch_params(cca, config.cca_branch).items()}}


def cohort_vectors(files: Sequence[FileEmbeddings], speakers: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(enrollment-model, runtime-model) L2-normalised mean whole-utterance embedding per
    speaker, sorted by speaker: the S-norm cohort."""
    by_speaker: dict[str, tuple[list, list]] = {}
    for item in files:
        rows = item.plan.roles == ROLE_FULL
        if item.speaker in speakers and rows.any():
            e, r = by_speaker.setdefault(item.speaker, ([], []))
            e.append(item.target[rows])
            r.append(item.source[rows])
    names = sorted(by_speaker)
    if not names:
        raise ValueError("no cohort speakers")
    return (l2_normalise(np.stack([np.concatenate(by_speaker[n][0]).mean(axis=0) for n in names])).astype(np.float32),
            l2_normalise(np.stack([np.concatenate(by_speaker[n][1]).mean(axis=0) for n in names])).astype(np.float32))
