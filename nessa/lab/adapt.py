"""`nessa align adapt`: fine-tune the active alignment on a gallery's own in-domain pairs.

Input: the same enrollment audio embedded by both models (the runtime model's vector and
the enrollment model's vector of each chunk / utterance; chunk the retained enrollment
utterances to get many pairs per speaker) and the speaker of each pair. Output: a new,
self-describing artifact (``<parent>+adapted`` unless named), whose config records the
parent's name and sha256 and the adaptation settings.

Two methods, both leave the *enrollment side* of the alignment untouched, so profiles'
stored, transformed vectors stay valid; only queries are mapped differently:

* ``closed_form`` (any kind): a linear correction ``W`` of the aligned query,
  ``min ||A W - T||^2 + lam * n * ||W - I||^2`` with ``A`` the L2-normalised aligned
  runtime vectors and ``T`` the L2-normalised transformed enrollment vectors of the same
  chunks; ``W = I`` when there is no data (the pull to the identity is the L2-SP of a
  closed form). ``W`` is folded into the output layer(s), so the kind does not change.
* ``finetune`` (``nn-*`` kinds): gradient steps on the source tower with the training
  losses (cosine fidelity + supervised contrastive on the gallery's speakers) plus an
  L2-SP pull ``l2_sp * sum ||theta - theta_parent||^2`` to the parent's weights.

Calibration: a small gallery cannot calibrate, so the parent's cross calibration and
fusion are kept, unless the gallery holds at least ``min_calibration_speakers``; then a
quarter of its speakers is held out, the adaptation fitted on the rest, both
calibrations refitted on the held-out speakers' trials, and the adaptation refitted on
everyone.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from nessa.artifact import AlignmentArtifact, utc_now
from nessa.calibration import LogisticCalibration
from nessa.lab.calibration_fit import fit_on_trials
from nessa.lab.config import config_from_any
from speechcore.embedder import l2_normalise

METHODS = ("auto", "closed_form", "finetune")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    #: "auto": finetune for nn-* kinds (best on test-other, docs/nessa-experiments.md), else closed_form
    method: str = "auto"
    #: closed form: pull towards the identity, relative to the number of pairs
    lam: float = 1.0
    #: finetune: steps (full batch), learning rate, L2-SP strength, loss weights
    steps: int = 60
    lr: float = 3e-4
    l2_sp: float = 1.0
    temperature: float = 0.1
    w_cosine: float = 1.0
    w_contrastive: float = 1.0
    #: recalibrate only from this many gallery speakers on
    min_calibration_speakers: int = 40
    calibration_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")

    @classmethod
    def from_any(cls, config) -> "AdaptConfig":
        return config_from_any(cls, config, "adaptation")


# ============================================================================ closed form
def _aligned(artifact: AlignmentArtifact, source: np.ndarray) -> np.ndarray:
    return artifact.transform(source).astype(np.float64)


def _fold_output(kind: str, params: dict, w: np.ndarray) -> dict:
    """Params whose source transform is the parent's followed by ``@ w``."""
    p = {k: np.asarray(v, dtype=np.float64).copy() for k, v in params.items()}
    if kind == "ridge":
        p["weight"] = p["weight"] @ w
    elif kind == "cca":
        cw = p["component_weights"]
        p["x_projection"] = (p["x_projection"] * cw) @ w / cw
    elif kind in ("nn-linear", "nn-resmlp", "nn-twotower", "nn-mlp"):
        for key in ("weight", "bias", "w2", "b2"):
            if key in p:
                p[key] = p[key] @ w
    else:
        raise ValueError(f"closed-form adaptation does not know kind {kind!r}")
    return p


def closed_form_correction(aligned: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_W ||A W - T||^2 + lam n ||W - I||^2`` (rows of A and T L2-normalised)."""
    a, t = l2_normalise(np.asarray(aligned, np.float64)), l2_normalise(np.asarray(targets, np.float64))
    n, k = a.shape
    reg = lam * max(n, 1)
    return np.linalg.solve(a.T @ a + reg * np.eye(k), a.T @ t + reg * np.eye(k))


def _adapt_closed_form(artifact: AlignmentArtifact, source, target, config: AdaptConfig) -> dict:
    w = closed_form_correction(_aligned(artifact, source), artifact.transform_target(target), config.lam)
    return _fold_output(artifact.kind, artifact.params, w)


# ============================================================================ finetune
def _adapt_finetune(artifact: AlignmentArtifact, source, target, speakers, config: AdaptConfig) -> dict:
    import torch

    from nessa.lab import losses
    from nessa.lab.torch_alignment import TorchAlignment
    from nessa.network import CCA_BRANCH_SHAPES

    if not artifact.kind.startswith("nn-"):
        raise ValueError(f"finetune needs an nn-* artifact, got {artifact.kind!r}; use method closed_form")
    # nn-twotower-cca: the tower is fine-tuned, its fixed linear CCA branch kept as it is
    branch = {k: v for k, v in artifact.params.items() if k in CCA_BRANCH_SHAPES}
    arch = "twotower" if artifact.kind == "nn-twotower-cca" else artifact.kind[3:]
    torch.manual_seed(config.seed)
    model = TorchAlignment(arch, {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in artifact.params.items()
                                  if k not in branch})
    source_params = [(name, p) for name, p in model.named_parameters() if not name.startswith("t_")]
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("t_"))
    anchors = {name: p.detach().clone() for name, p in source_params}
    optimiser = torch.optim.Adam([p for _, p in source_params], lr=config.lr)
    x = torch.from_numpy(l2_normalise(np.asarray(source, np.float32)))
    with torch.no_grad():
        t = torch.nn.functional.normalize(model.target(torch.from_numpy(l2_normalise(np.asarray(target,
                                                                                                 np.float32)))), dim=1)
    _, labels = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    labels = torch.from_numpy(labels.astype(np.int64))
    model.train()
    for _ in range(config.steps):
        a = torch.nn.functional.normalize(model.source(x), dim=1)
        loss = config.l2_sp * sum(((p - anchors[name]) ** 2).sum() for name, p in source_params)
        if config.w_cosine:
            loss = loss + config.w_cosine * losses.cosine_fidelity(a, t)
        if config.w_contrastive and len(torch.unique(labels)) > 1:
            loss = loss + config.w_contrastive * losses.supervised_contrastive(a, t, labels, config.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return {**model.export_params(), **branch}


def adapted_params(artifact: AlignmentArtifact, source, target, speakers, config: AdaptConfig) -> dict:
    if len(source) == 0:
        return {k: np.asarray(v).copy() for k, v in artifact.params.items()}
    method = config.method
    if method == "auto":
        method = "finetune" if artifact.kind.startswith("nn-") else "closed_form"
    if method == "closed_form":
        return _adapt_closed_form(artifact, source, target, config)
    return _adapt_finetune(artifact, source, target, speakers, config)


def _with_params(artifact: AlignmentArtifact, params: dict, **changes) -> AlignmentArtifact:
    return dataclasses.replace(artifact, params={k: np.asarray(v, np.float32) for k, v in params.items()}, **changes)


# ============================================================================ calibration
def _gallery_profiles(source, target, speakers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out gallery trials: profile = the L2-normalised mean of a speaker's vectors (both
    models), tests = each runtime vector; returns (runtime profiles, enrollment profiles,
    is_target (tests, profiles))."""
    speakers = np.asarray(speakers).astype(str)
    names = sorted(set(speakers.tolist()))
    prof_r = l2_normalise(np.stack([np.asarray(source)[speakers == n].mean(axis=0) for n in names]))
    prof_e = l2_normalise(np.stack([np.asarray(target)[speakers == n].mean(axis=0) for n in names]))
    return prof_r, prof_e, speakers[:, None] == np.asarray(names)[None, :]


def _recalibrate(artifact: AlignmentArtifact, source, target, speakers, config: AdaptConfig):
    prof_r, prof_e, is_target = _gallery_profiles(source, target, speakers)
    runtime = l2_normalise(np.asarray(source, np.float64)) @ prof_r.T
    cross = artifact.cross_cosine(source, prof_e)
    calibrations = {"calibration": ([cross], ("cross_cosine",), LogisticCalibration.from_dict(artifact.calibration)),
                    "fusion": ([runtime, cross], ("runtime_cosine", "cross_cosine"),
                               LogisticCalibration.from_dict(artifact.fusion))}
    if artifact.scoring.get("fused") and not artifact.scoring.get("duration_bands"):
        # the calibrations the service reads (score_candidates), on the same held-out trials
        features = artifact.scorer.candidate_features(source, prof_e, prof_r)
        for label in ("fused", "cross"):
            parent = LogisticCalibration.from_dict(artifact.scoring[label])
            calibrations[f"scoring.{label}"] = ([features[n] for n in parent.features], parent.features, parent)
    out = {}
    for label, (features, names, parent) in calibrations.items():
        fitted, _ = fit_on_trials(features, is_target, names, default_threshold=parent.default_threshold)
        out[label] = fitted.to_dict()
    return out


# ============================================================================ entry points
def adapt_artifact(artifact: AlignmentArtifact, source_embeddings, target_embeddings, speaker_ids, *,
                   config: AdaptConfig | dict | None = None, name: str | None = None) -> AlignmentArtifact:
    """A new artifact adapted to the gallery's paired embeddings (see the module docstring)."""
    config = AdaptConfig.from_any(config)
    source = np.asarray(source_embeddings, dtype=np.float32)
    target = np.asarray(target_embeddings, dtype=np.float32)
    speakers = np.asarray(speaker_ids).astype(str)
    if source.ndim != 2 or source.shape[1] != artifact.source_dim:
        raise ValueError(f"source embeddings must be (N, {artifact.source_dim}), got {source.shape}")
    if target.shape != (len(source), artifact.target_dim) or len(speakers) != len(source):
        raise ValueError(f"need N paired rows: {source.shape}, {target.shape}, {speakers.shape}")
    names = sorted(set(speakers.tolist()))
    calibration, fusion, scoring, recalibrated = artifact.calibration, artifact.fusion, artifact.scoring, False
    if len(names) >= config.min_calibration_speakers:
        rng = np.random.default_rng(config.seed)
        held = set(rng.choice(names, size=max(2, int(round(config.calibration_fraction * len(names)))),
                              replace=False).tolist())
        fit_rows = ~np.isin(speakers, list(held))
        partial = _with_params(artifact, adapted_params(artifact, source[fit_rows], target[fit_rows],
                                                        speakers[fit_rows], config))
        fitted = _recalibrate(partial, source[~fit_rows], target[~fit_rows], speakers[~fit_rows], config)
        calibration, fusion, recalibrated = fitted["calibration"], fitted["fusion"], True
        if "scoring.fused" in fitted:
            scoring = {**artifact.scoring, "fused": fitted["scoring.fused"], "cross": fitted["scoring.cross"]}
    params = adapted_params(artifact, source, target, speakers, config)
    digest = hashlib.sha256(source.tobytes() + target.tobytes() + "\n".join(speakers).encode()).hexdigest()
    resolved = config.method if config.method != "auto" else (
        "finetune" if artifact.kind.startswith("nn-") else "closed_form")
    adaptation = {**dataclasses.asdict(config), "resolved_method": resolved,
                  "parent": artifact.name, "parent_sha256": artifact.sha256,
                  "n_pairs": int(len(source)), "n_speakers": len(names), "pairs_sha256": digest,
                  "recalibrated": recalibrated}
    return _with_params(artifact, params, name=name or f"{artifact.name}+adapted",
                        config={**artifact.config, "adaptation": adaptation},
                        calibration=calibration, fusion=fusion, scoring=scoring,
                        command=f"nessa align adapt (parent {artifact.name})", created_at=utc_now())


def adapt_from_pairs(artifact_dir, source_vecs, target_vecs, speaker_ids, out_dir, name: str | None = None,
                     config: AdaptConfig | dict | None = None) -> AlignmentArtifact:
    """Load ``artifact_dir``, adapt on the gallery's pairs, save under ``out_dir``; returns it."""
    parent = AlignmentArtifact.load(artifact_dir)
    adapted = adapt_artifact(parent, source_vecs, target_vecs, speaker_ids, config=config, name=name)
    adapted.save(out_dir)
    return adapted
