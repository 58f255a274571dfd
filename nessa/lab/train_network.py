"""Train an alignment *network* (nessa.network) and save it as an artifact.

Same protocol as ``nessa.lab.train.train_alignment``: embed chunk pairs through the cache,
split the speakers of the primary corpus (the first one) into fit / dev, train on the fit
speakers (plus every speaker of the other corpora, weighted per domain), measure and
calibrate (cross-model score and fusion with the runtime cosine) on the dev trials,
then retrain the same configuration on all speakers and save.

Training is seeded and resumable: one checkpoint per epoch under
``<cache_dir>/../nessa-train/<run key>/`` (the run key hashes config, seed and data).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from nessa import metrics
from nessa.artifact import AlignmentArtifact, utc_now
from nessa.calibration import LogisticCalibration
from nessa.lab.calibration_fit import fit_logistic_calibration, fit_on_trials
from nessa.lab.config import config_from_any
from nessa.lab.data import (ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST, FileEmbeddings, Utterance,
                            default_audio_loader, describe_utterances, embed_corpus, list_utterances,
                            speech_only_loader)
from nessa.lab.linear import RidgeSolver, fit_cca
from nessa.lab.network_init import cca_branch_params, cca_init, ridge_init
from nessa.lab.torch_alignment import build_module
from nessa.lab.train import (AlignmentConfig, DevTrials, _split_scores, build_dev_trials, dev_evaluation,
                         evaluate_on_dev, split_speakers)
from nessa.network import ARCHITECTURES, KIND_OF, TRANSFORMS
from nessa.scoring import CANDIDATE_FEATURES, TOWER_FEATURES
from speechcore.embedder import l2_normalise

#: bump when the parameterisation changes, so that old checkpoints are not resumed
CHECKPOINT_VERSION = 2
PAIR_ROLES = {"chunks": (ROLE_CHUNK, ROLE_FULL), "all": (ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST)}
#: NetworkConfig fields applied after a training run (they do not change a run's checkpoints)
POST_TRAINING_FIELDS = ("wise_alpha", "soup", "snorm_top_k", "fused_features", "snorm_features", "duration_bands",
                        "cca_branch", "cca_branch_shrinkage", "cca_branch_pairs")


def _normalise_domain_weights(values: dict) -> dict:
    """domain_weights as sorted (name, weight) pairs, from a dict or a sequence of pairs."""
    if "domain_weights" in values:
        weights = values["domain_weights"]
        items = weights.items() if isinstance(weights, dict) else weights
        values["domain_weights"] = tuple(sorted((str(k), float(v)) for k, v in items))
    return values


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture, initialisation, losses and optimisation of an alignment network."""

    arch: str = "resmlp"
    hidden: int = 512
    #: two-tower only: dimension of the shared space and hidden size of the target tower
    shared_dim: int = 128
    target_hidden: int = 128
    #: "ridge" (linear part = the ridge solution), "cca" (two-tower: both linear parts =
    #: weighted CCA projections) or "random"
    init: str = "ridge"
    ridge_alpha: float = 3.0
    cca_shrinkage: float = 0.8
    #: which plan segments of training speakers are pairs ("chunks": random chunks and
    #: whole utterances, as ridge; "all": also the profile / test tiles)
    pair_roles: str = "all"
    epochs: int = 20
    steps_per_epoch: int = 40
    speakers_per_batch: int = 64
    chunks_per_speaker: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: penalty ``l2_init * sum((p - p_init)^2)`` pulling every trained array towards its
    #: initial value (L2-SP: keeps a ridge/CCA-initialised net near its linear solution)
    l2_init: float = 0.0
    #: fit the ridge / CCA initialisation on this domain's pairs only ("": every pair)
    init_domain: str = ""
    #: sampling weight of pairs of at least ``long_seconds`` within a speaker's batch rows
    #: (1: uniform; long queries are few among the chunks but are what full-length tests are)
    long_pair_weight: float = 1.0
    long_seconds: float = 4.0
    #: Gaussian noise on the standardised runtime input while training (std)
    input_noise: float = 0.0
    dropout: float = 0.0
    # loss weights
    w_cosine: float = 1.0
    w_mse: float = 0.0
    w_contrastive: float = 1.0
    #: two-tower: contrastive term among target-tower outputs (keeps the profile side discriminative)
    w_target_contrastive: float = 0.0
    temperature: float = 0.1
    #: GLSC-SDR global term: AAM classification against all training speakers' prototypes
    w_global: float = 0.0
    global_scale: float = 30.0
    global_margin: float = 0.1
    #: (domain, weight) pairs; a domain is the folder name of a training corpus; others weigh 1
    domain_weights: tuple = ()
    #: corpora whose median clip is shorter than this are concatenated per speaker (0: never)
    concatenate_below_seconds: float = 2.0
    #: WiSE-FT: the exported weights are ``init + wise_alpha * (trained - init)`` (1: the
    #: trained weights; 0: the initial, e.g. CCA, solution). Robust fine-tuning under
    #: distribution shift (Wortsman et al., 2022).
    wise_alpha: float = 1.0
    #: weight-space ensemble ("model soup"): this many runs from the *same* initial weights
    #: with different batch orders (seed, seed+1, ...), averaged
    soup: int = 1
    #: keep the linear (CCA / ridge) parts fixed and train only the residual branches
    freeze_linear: bool = False
    #: two-tower only: score weight of a fixed linear CCA branch fitted on the primary
    #: corpus' pairs (kind nn-twotower-cca: cosine = (1 - b) cos_tower + b cos_cca; 0: none)
    cca_branch: float = 0.0
    cca_branch_shrinkage: float = 0.6
    #: which segments of the primary corpus the branch is fitted on: "chunks" (random chunks
    #: and whole utterances, as nessa.lab.train's CCA) or "all" (also the profile / test tiles)
    cca_branch_pairs: str = "chunks"
    # runtime scoring stored in the artifact (``scoring``; used by score_candidates)
    #: adaptive S-norm of the fused features against a cohort of the primary corpus'
    #: speakers stored in the artifact: top-k (0: off)
    snorm_top_k: int = 0
    #: comma-separated features of the fused score (nessa.scoring.CANDIDATE_FEATURES)
    fused_features: str = "runtime_cosine,cross_cosine"
    #: comma-separated features that are S-normalised (with snorm_top_k; "": all fused ones)
    snorm_features: str = ""
    #: comma-separated upper bounds (seconds) of query-duration bands, each with its own
    #: fusion / calibration fitted on the dev tests of that length ("": one for all)
    duration_bands: str = ""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}")
        if self.init not in ("ridge", "cca", "random"):
            raise ValueError("init must be ridge, cca or random")
        if self.init == "cca" and self.arch != "twotower":
            raise ValueError("init=cca needs arch=twotower")
        if self.init == "ridge" and self.arch not in ("linear", "resmlp"):
            raise ValueError("init=ridge needs arch=linear or resmlp")
        if self.pair_roles not in PAIR_ROLES:
            raise ValueError(f"pair_roles must be one of {sorted(PAIR_ROLES)}")
        if self.soup < 1:
            raise ValueError("soup must be >= 1")
        if self.cca_branch and (self.arch != "twotower" or not 0.0 < self.cca_branch < 1.0):
            raise ValueError("cca_branch needs arch=twotower and a weight between 0 and 1")
        if self.cca_branch_pairs not in PAIR_ROLES:
            raise ValueError(f"cca_branch_pairs must be one of {sorted(PAIR_ROLES)}")
        unknown = (set(self.fused_feature_names) | set(self.snorm_feature_names)) - set(CANDIDATE_FEATURES)
        if unknown or not self.fused_feature_names:
            raise ValueError(f"fused_features must name some of {CANDIDATE_FEATURES}, got {self.fused_features!r}")
        if not self.cca_branch and set(TOWER_FEATURES) & (set(self.fused_feature_names) | set(self.snorm_feature_names)):
            raise ValueError(f"{', '.join(TOWER_FEATURES)} need a CCA branch (cca_branch > 0)")
        _ = self.band_edges

    @property
    def fused_feature_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.fused_features.split(",") if name.strip())

    @property
    def snorm_feature_names(self) -> tuple[str, ...]:
        names = tuple(name.strip() for name in self.snorm_features.split(",") if name.strip())
        return names or self.fused_feature_names

    @property
    def band_edges(self) -> tuple[float, ...]:
        edges = tuple(float(v) for v in self.duration_bands.split(",") if v.strip())
        if list(edges) != sorted(set(edges)):
            raise ValueError("duration_bands must be increasing")
        return edges

    @property
    def rich_scoring(self) -> bool:
        """Whether the artifact gets a ``scoring`` section (anything beyond the plain fusion)."""
        return bool(self.snorm_top_k or self.band_edges
                    or self.fused_feature_names != ("runtime_cosine", "cross_cosine"))

    @property
    def kind(self) -> str:
        return "nn-twotower-cca" if self.cca_branch else KIND_OF[self.arch]

    def domain_weight(self, domain: str) -> float:
        return float(dict((str(k), float(v)) for k, v in self.domain_weights).get(domain, 1.0))

    @classmethod
    def from_any(cls, config: "NetworkConfig | dict | None") -> "NetworkConfig":
        return config_from_any(cls, config, "network", prepare=_normalise_domain_weights)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["domain_weights"] = {k: v for k, v in self.domain_weights}
        return out


# ----------------------------------------------------------------------------- data
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


def _initial_params(config: NetworkConfig, pairs: PairSet) -> dict:
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


# ----------------------------------------------------------------------------- training
def _run_key(config: NetworkConfig, seed: int, pairs: PairSet, batch_seed: int | None = None) -> str:
    # what shapes one training run (post-hoc soup / WiSE-FT settings do not)
    trained = {k: v for k, v in config.as_dict().items() if k not in POST_TRAINING_FIELDS}
    if config.long_pair_weight == 1.0:  # uniform sampling: the same runs (and keys) as before the option
        trained.pop("long_pair_weight"), trained.pop("long_seconds")
    identity = {"version": CHECKPOINT_VERSION, "config": trained, "seed": seed, "n": len(pairs.x),
                "x": hashlib.sha256(pairs.x.tobytes()).hexdigest(), "y": hashlib.sha256(pairs.y.tobytes()).hexdigest(),
                "speaker": hashlib.sha256(pairs.speaker.astype(np.int64).tobytes()).hexdigest(),
                "weights": pairs.speaker_weight.tolist()}
    if batch_seed is not None and batch_seed != seed:
        identity["batch_seed"] = batch_seed
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _epoch_batches(pairs: PairSet, config: NetworkConfig, seed: int, epoch: int, rows_by_speaker: list):
    rng = np.random.default_rng([seed, epoch, 7])
    n_speakers = len(pairs.speakers)
    p = pairs.speaker_weight / pairs.speaker_weight.sum()
    per_batch = min(config.speakers_per_batch, n_speakers)
    row_p = None
    if config.long_pair_weight != 1.0:  # (the uniform case keeps its exact random stream)
        if pairs.seconds is None:
            raise ValueError("long_pair_weight needs pair durations")
        row_p = []
        for rows in rows_by_speaker:
            w = np.where(pairs.seconds[rows] >= config.long_seconds, config.long_pair_weight, 1.0)
            row_p.append(w / w.sum())
    for _ in range(config.steps_per_epoch):
        chosen = rng.choice(n_speakers, size=per_batch, replace=False, p=p)
        rows = [rng.choice(rows_by_speaker[s], size=config.chunks_per_speaker,
                           replace=len(rows_by_speaker[s]) < config.chunks_per_speaker,
                           p=None if row_p is None else row_p[s]) for s in chosen]
        yield np.concatenate(rows)


def fit_network(pairs: PairSet, config: NetworkConfig | dict | None = None, seed: int = 0, *,
                checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
                log: list | None = None, eval_fn: Callable[[dict], dict] | None = None) -> dict:
    """Train on ``pairs``; returns numpy params of kind ``config.kind``.

    With ``checkpoint_dir`` every epoch is checkpointed under ``<checkpoint_dir>/<run key>/``
    and a rerun resumes after the last completed epoch (identical result to an
    uninterrupted run). ``eval_fn(params) -> dict`` is called after each epoch if given
    and its output appended to ``log``. ``config.soup`` > 1 averages that many runs (same
    initial weights, batch orders from seeds ``seed, seed+1, ...``); ``config.wise_alpha``
    < 1 then interpolates the result towards the initial weights (WiSE-FT).
    """
    config = NetworkConfig.from_any(config)
    runs = [_fit_one(pairs, config, seed, batch_seed, checkpoint_dir=checkpoint_dir, progress=progress,
                     log=log if batch_seed == seed else None, eval_fn=eval_fn)
            for batch_seed in range(seed, seed + config.soup)]
    initial, trained = runs[0]
    if config.soup > 1:
        trained = {key: np.mean([run[1][key] for run in runs], axis=0).astype(np.float32) for key in trained}
    if config.wise_alpha != 1.0:
        alpha = np.float32(config.wise_alpha)
        trained = {key: (initial[key] + alpha * (value - initial[key])).astype(np.float32)
                   for key, value in trained.items()}
    return trained


def _fit_one(pairs: PairSet, config: NetworkConfig, seed: int, batch_seed: int, *,
             checkpoint_dir, progress: bool, log: list | None, eval_fn) -> tuple[dict, dict]:
    """One training run: (initial params, trained params). ``seed`` sets the initial
    weights, ``batch_seed`` the batch order (equal for a plain run)."""
    import torch

    from nessa.lab import losses

    torch.manual_seed(batch_seed)
    model = build_module(config.arch, pairs.x.shape[1], pairs.y.shape[1], hidden=config.hidden,
                         shared_dim=config.shared_dim, target_hidden=config.target_hidden,
                         init=_initial_params(config, pairs), seed=seed)
    model.input_noise, model.dropout = config.input_noise, config.dropout
    initial = model.export_params()
    if config.freeze_linear:
        for name in ("weight", "t_weight"):
            if hasattr(model, name):
                getattr(model, name).requires_grad_(False)
    anchors = {name: value.detach().clone() for name, value in model.named_parameters()}
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    x, y = torch.from_numpy(pairs.x), torch.from_numpy(pairs.y)
    labels_all = torch.from_numpy(pairs.speaker.astype(np.int64))
    rows_by_speaker = [np.flatnonzero(pairs.speaker == s) for s in range(len(pairs.speakers))]
    centroids = torch.from_numpy(l2_normalise(np.stack([pairs.y[r].mean(axis=0) for r in rows_by_speaker])))
    sample_weight = torch.from_numpy(pairs.speaker_weight.astype(np.float32))[labels_all]
    total_steps = config.epochs * config.steps_per_epoch

    run_dir = None
    start_epoch = 0
    if checkpoint_dir is not None:
        run_dir = pathlib.Path(checkpoint_dir) / _run_key(config, seed, pairs, batch_seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        done = sorted(run_dir.glob("epoch_*.pt"))
        if done:
            state = torch.load(done[-1], weights_only=False)
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            start_epoch = state["epoch"] + 1
            if log is not None:
                log.extend(state.get("log", []))

    model.train()
    bar = tqdm(range(start_epoch, config.epochs), desc=f"training {config.kind}", unit="epoch",
               disable=not progress, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        model.train()
        totals = {}
        for step, rows in enumerate(_epoch_batches(pairs, config, batch_seed, epoch, rows_by_speaker)):
            global_step = epoch * config.steps_per_epoch + step
            for group in optimiser.param_groups:  # cosine decay with 1 epoch of warm-up
                warm = min(1.0, (global_step + 1) / max(1, config.steps_per_epoch))
                group["lr"] = config.lr * warm * 0.5 * (1 + np.cos(np.pi * global_step / total_steps))
            index = torch.from_numpy(rows)
            xb, yb, lb, wb = x[index], y[index], labels_all[index], sample_weight[index]
            raw_a, raw_t = model.source(xb), model.target(yb)
            a = torch.nn.functional.normalize(raw_a, dim=1)
            t = torch.nn.functional.normalize(raw_t, dim=1)
            parts = {}
            if config.w_cosine:
                parts["cosine"] = config.w_cosine * losses.cosine_fidelity(a, t, wb)
            if config.w_mse:
                parts["mse"] = config.w_mse * losses.mse_fidelity(raw_a, raw_t, wb)
            if config.w_contrastive:
                parts["contrastive"] = config.w_contrastive * losses.supervised_contrastive(
                    a, t, lb, config.temperature, wb)
            if config.w_target_contrastive:
                parts["target_contrastive"] = config.w_target_contrastive * losses.supervised_contrastive(
                    t, t, lb, config.temperature, wb, exclude_self=True)
            if config.w_global:
                prototypes = torch.nn.functional.normalize(model.target(centroids), dim=1)
                parts["global"] = config.w_global * losses.prototype_classification(
                    a, prototypes, lb, config.global_scale, config.global_margin, wb)
            if config.l2_init:
                parts["l2_init"] = config.l2_init * sum(((value - anchors[name]) ** 2).sum()
                                                        for name, value in model.named_parameters())
            loss = sum(parts.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for key, value in {"loss": loss, **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / config.steps_per_epoch
        entry = {"epoch": epoch, **{k: round(v, 5) for k, v in totals.items()}}
        if eval_fn is not None:
            entry.update(eval_fn(model.export_params()))
        if log is not None:
            log.append(entry)
        bar.set_postfix({k: v for k, v in entry.items() if k != "epoch"})
        if run_dir is not None:
            path = run_dir / f"epoch_{epoch:03d}.pt"
            temporary = path.with_suffix(".tmp")
            torch.save({"epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                        "log": list(log or [])}, temporary)
            os.replace(temporary, path)
            for old in run_dir.glob("epoch_*.pt"):
                if old != path:
                    old.unlink()
    model.eval()
    return initial, model.export_params()


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


# ----------------------------------------------------------------------------- scoring on dev
def network_cross_scores(kind: str, params: dict, trials: DevTrials) -> np.ndarray:
    source_fn, target_fn = TRANSFORMS[kind]
    p32 = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    aligned = l2_normalise(source_fn(p32, l2_normalise(trials.test_source.astype(np.float32))))
    profiles = l2_normalise(target_fn(p32, l2_normalise(trials.profile_target.astype(np.float32))))
    return aligned.astype(np.float64) @ profiles.T.astype(np.float64)


def dev_eers(scores: np.ndarray, trials: DevTrials) -> dict:
    """EER % pooled and per test length."""
    out = {"pooled": 100 * metrics.equal_error_rate(*_split_scores(scores, trials.is_target))[0]}
    for seconds in np.unique(trials.test_seconds):
        rows = trials.test_seconds == seconds
        out[f"{seconds:g}s"] = 100 * metrics.equal_error_rate(*_split_scores(scores, trials.is_target, rows))[0]
    return {k: round(float(v), 3) for k, v in out.items()}


def fused_llr(runtime: np.ndarray, cross: np.ndarray, trials: DevTrials, prior: float = 0.5) -> np.ndarray:
    mask = trials.is_target
    fusion = fit_logistic_calibration(np.c_[runtime[mask], cross[mask]], np.c_[runtime[~mask], cross[~mask]],
                                          ("runtime_cosine", "cross_cosine"), prior=prior)
    return fusion.llr(runtime, cross)


# ----------------------------------------------------------------------------- rich scoring
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


def scoring_section(kind: str, params: dict, cohort: tuple[np.ndarray, np.ndarray] | None, trials: DevTrials,
                    config: NetworkConfig, base: AlignmentConfig) -> dict:
    """Calibrations (pooled and per duration band, with thresholds) of ``score_candidates``
    scores on the dev trials, for the scoring ``config`` asks for; and their dev EERs."""
    snorm = {"top_k": int(config.snorm_top_k), "features": list(config.snorm_feature_names)} \
        if config.snorm_top_k else None
    extra = {} if cohort is None else {"cohort_enroll": cohort[0], "cohort_runtime": cohort[1]}
    probe = AlignmentArtifact(name="dev", kind=kind, source_version="dev", source_dim=trials.test_source.shape[1],
                              source_weights_sha256="", target_version="dev",
                              target_dim=trials.profile_target.shape[1], target_weights_sha256="",
                              params={**params, **extra}, scoring={"snorm": snorm} if snorm else {})
    features = probe.scorer.candidate_features(trials.test_source, trials.profile_target, trials.profile_source)
    names = config.fused_feature_names
    is_target = trials.is_target

    def calibrate(rows: np.ndarray, feature_names: tuple[str, ...]) -> tuple[LogisticCalibration, np.ndarray]:
        return fit_on_trials([features[name][rows] for name in feature_names], is_target[rows], feature_names,
                                 prior=base.calibration_prior, default_threshold=base.default_threshold)

    everything = np.ones(len(trials.test_seconds), dtype=bool)
    fused, fused_llr = calibrate(everything, names)
    cross, cross_llr = calibrate(everything, ("cross_cosine",))
    section = {"fused_features": list(names), "fused": fused.to_dict(), "cross": cross.to_dict()}
    if snorm:
        section["snorm"] = snorm
    edges = config.band_edges
    if edges:
        bands, lower = [], 0.0
        banded_llr = np.empty_like(fused_llr)
        for upper in list(edges) + [None]:
            rows = (trials.test_seconds >= lower) & (trials.test_seconds < (np.inf if upper is None else upper))
            if not rows.any() or is_target[rows].all() or not is_target[rows].any():
                raise ValueError(f"duration band [{lower}, {upper}) has no dev tests with both trial kinds")
            band_fused, band_llr = calibrate(rows, names)
            band_cross, _ = calibrate(rows, ("cross_cosine",))
            banded_llr[rows] = band_llr
            bands.append({"max_seconds": upper, "fused": band_fused.to_dict(), "cross": band_cross.to_dict()})
            lower = upper
        section["duration_bands"] = bands
        fused_llr = banded_llr
    report = {}
    for label, llr in (("fused", fused_llr), ("cross", cross_llr)):
        report[label] = {"pooled": round(100 * metrics.equal_error_rate(llr[is_target], llr[~is_target])[0], 3)}
        for seconds in np.unique(trials.test_seconds):
            rows = trials.test_seconds == seconds
            report[label][f"{seconds:g}s"] = round(
                100 * metrics.equal_error_rate(llr[rows][is_target[rows]], llr[rows][~is_target[rows]])[0], 3)
    section["metrics"] = {"dev_eer_percent": report}
    return section


# ----------------------------------------------------------------------------- corpora
def _median_clip_seconds(utterances: Sequence[Utterance], sample: int = 50) -> float:
    import soundfile as sf

    picked = list(utterances)[:: max(1, len(utterances) // sample)]
    return float(np.median([sf.info(path).duration for _, path in picked]))


def prepare_corpora(train_dirs: Sequence[str], config: NetworkConfig,
                    concat_dir: str | os.PathLike) -> list[tuple[str, list[Utterance]]]:
    """[(domain, utterances)] per training corpus; short-clip corpora concatenated per speaker."""
    from nessa.lab.corpora import concatenate_speaker_clips

    corpora = []
    for directory in train_dirs:
        domain = pathlib.Path(directory).name
        utterances = list_utterances(directory)
        if config.concatenate_below_seconds and _median_clip_seconds(utterances) < config.concatenate_below_seconds:
            root = concatenate_speaker_clips(directory, pathlib.Path(concat_dir) / f"{domain}-concat")
            utterances = list_utterances(root)
        corpora.append((domain, sorted(utterances)))
    return corpora


# ----------------------------------------------------------------------------- the whole thing
def train_network_alignment(source, target, corpora: Sequence[tuple[str, list[Utterance]]], *,
                            out_dir: str | os.PathLike, name: str, config: NetworkConfig | dict | None = None,
                            seed: int = 0, cache_dir: str | os.PathLike, progress: bool = True, command: str = "",
                            load_audio: Callable[[str], np.ndarray] | None = None,
                            data_sources: Sequence[str] = (),
                            base: AlignmentConfig | dict | None = None) -> AlignmentArtifact:
    """Embed, train on fit speakers, calibrate + fuse on dev speakers of the first corpus,
    retrain on all speakers, save ``<out_dir>/<name>/``. ``base`` carries the chunking,
    dev split and calibration settings of ``nessa.lab.train.AlignmentConfig`` (defaults: the
    shipped ridge's)."""
    config = NetworkConfig.from_any(config)
    base = AlignmentConfig.from_any(base)
    started = time.monotonic()
    all_utterances = sorted({u for _, utterances in corpora for u in utterances})
    data_description, data_sha256 = describe_utterances(all_utterances)
    load_audio = load_audio or default_audio_loader()
    if base.speech_only:
        load_audio = speech_only_loader(load_audio)
    files, domains = [], {}
    for domain, utterances in corpora:
        embedded = embed_corpus(utterances, source, target, base.chunk_spec(seed), cache_dir=cache_dir,
                                load_audio=load_audio, audio_tag="speech_only" if base.speech_only else "raw",
                                batch_size=base.batch_size, progress=progress)
        files += embedded
        domains.update({item.path: domain for item in embedded})
    embedded_at = time.monotonic()

    primary = {item.speaker for item in files if domains[item.path] == corpora[0][0]}
    fit_primary, dev_speakers = split_speakers(sorted(primary), base.dev_fraction, seed)
    all_speakers = {item.speaker for item in files}
    fit_speakers = all_speakers - set(dev_speakers)
    trials = build_dev_trials(files, set(dev_speakers))
    checkpoints = pathlib.Path(cache_dir).parent / "nessa-train"

    dev_log: list = []
    fit_pairs = build_pairs(files, domains, fit_speakers, config)
    params_dev = fit_network(fit_pairs, config, seed, checkpoint_dir=checkpoints, progress=progress, log=dev_log)
    primary_files = [item for item in files if domains[item.path] == corpora[0][0]]
    params_dev = add_cca_branch(params_dev, primary_files, set(fit_primary), config, base.cca_components)
    cross = network_cross_scores(config.kind, params_dev, trials)
    cross_calibration, fused_calibration, dev_report = evaluate_on_dev(cross, trials, base)

    all_pairs = build_pairs(files, domains, all_speakers, config)
    params = fit_network(all_pairs, config, seed, checkpoint_dir=checkpoints, progress=progress)
    params = add_cca_branch(params, primary_files, primary, config, base.cca_components)
    scoring = {}
    if config.rich_scoring:
        dev_cohort = cohort_vectors(primary_files, set(fit_primary)) if config.snorm_top_k else None
        scoring = scoring_section(config.kind, params_dev, dev_cohort, trials, config, base)
        if config.snorm_top_k:  # the shipped cohort: every speaker of the primary corpus
            params = {**params, **dict(zip(("cohort_enroll", "cohort_runtime"),
                                           cohort_vectors(primary_files, primary)))}
    finished = time.monotonic()
    evaluation = dev_evaluation(
        {"fit_speakers": len(fit_speakers), "dev_speakers": len(dev_speakers),
         "fit_pairs": int(len(fit_pairs.x)), "final_pairs": int(len(all_pairs.x))},
        dev_report, trials, extra={"training_log_dev_fit": dev_log},
        timing={"embedding": round(embedded_at - started, 1), "fitting": round(finished - embedded_at, 1)})
    domain_counts = {}
    for item in files:
        domain_counts.setdefault(domains[item.path], set()).add(item.speaker)
    artifact = AlignmentArtifact(
        name=name, kind=config.kind,
        source_version=source.version, source_dim=int(source.dim), source_weights_sha256=source.weights_sha256,
        target_version=target.version, target_dim=int(target.dim), target_weights_sha256=target.weights_sha256,
        params=params, config={**base.as_dict(), "kind": config.kind, "network": config.as_dict(), "seed": seed},
        data={**data_description, "n_utterances_used": len(files),
              "sources": [str(pathlib.PurePath(s)) for s in data_sources],
              "domains": {d: len(s) for d, s in sorted(domain_counts.items())},
              "fit_speakers": sorted(fit_speakers), "dev_speakers": dev_speakers},
        data_sha256=data_sha256, metrics=evaluation,
        calibration=cross_calibration.to_dict(), fusion=fused_calibration.to_dict(),
        command=command, created_at=utc_now(), scoring=scoring)
    artifact.save(out_dir)
    return artifact


def train_network_from_folders(source, target, train_dirs: Sequence[str], out_dir: str | os.PathLike, name: str,
                               config: NetworkConfig | dict | None = None, seed: int = 0,
                               cache_dir: str | os.PathLike = "var/cache/embeddings", command: str = "",
                               progress: bool = True, concat_dir: str | os.PathLike = "var/corpora",
                               base: AlignmentConfig | dict | None = None) -> AlignmentArtifact:
    """What ``nessa align train --arch ...`` calls. The first folder is the primary corpus
    (its speakers provide the dev split); the others only add training speakers, weighted by
    ``config.domain_weights`` (domain = folder name). Short-clip corpora (Speech Commands)
    are concatenated per speaker under ``concat_dir`` first."""
    if not train_dirs:
        raise ValueError("give at least one training corpus")
    config = NetworkConfig.from_any(config)
    corpora = prepare_corpora(train_dirs, config, concat_dir)
    return train_network_alignment(source, target, corpora, out_dir=out_dir, name=name, config=config, seed=seed,
                                   cache_dir=cache_dir, progress=progress, command=command,
                                   data_sources=[str(d) for d in train_dirs], base=base)
