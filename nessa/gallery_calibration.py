"""Gallery-aware calibration: the shipped LLRs, made stricter where a gallery's own audio
shows that its impostors score higher than LibriSpeech's (issue #12; chosen on dev speakers
as ``gallery-cal-refit-strict``, docs/calibration.md).

In-domain non-target trials come from the gallery alone: every enrollment of a profile,
embedded by the runtime model, scored by the shipped scoring as a query against every
*other* profile. A Gaussian is fitted to those LLRs, and the LLR is mapped by
``scale * llr + bias`` so that the Gaussian's tail above each stored threshold is that
threshold's promised false-accept rate (matched at the 1 % and 0.1 % points). The map is
*strict*: the final LLR is ``min(mapped, shipped)``, so the gallery can only make a decision
stricter, never accept what the shipped calibration rejects (a clean gallery cannot see the
channel of a noisy query). Galleries too small for a tail estimate keep the shipped one.

Same-speaker trials (an enrollment against its speaker's other enrollments) are scored too
where a speaker has two or more: they do not move the map, they report what it costs
(the in-domain false-reject rate at each threshold, before and after).
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from nessa.calibration import FAR_TARGETS

#: the smallest gallery a map is fitted on (else the shipped calibration stays)
MIN_PROFILES, MIN_NONTARGETS = 5, 50
LOW, HIGH = "far_1pct", "far_0.1pct"


def fit_map(nontargets: np.ndarray, thresholds: dict, kind: str = "refit") -> tuple[float, float] | None:
    """(scale, bias) so that ``scale * llr + bias`` puts a Gaussian fitted to the in-domain
    non-target LLRs at the promised FAR above each stored threshold (``shift``: scale 1,
    matched at far_1pct; ``refit``: matched at far_1pct and far_0.1pct). None when too few."""
    nontargets = np.asarray(nontargets, dtype=np.float64)
    if len(nontargets) < MIN_NONTARGETS:
        return None
    mean, sd = float(np.mean(nontargets)), float(np.std(nontargets, ddof=1))
    if not np.isfinite(sd) or sd <= 0:
        return None
    at = {name: mean + sd * statistics.NormalDist().inv_cdf(1.0 - far) for name, far in FAR_TARGETS.items()}
    if kind == "shift":
        return 1.0, thresholds[LOW] - at[LOW]
    if kind != "refit":
        raise ValueError(f"unknown map kind {kind!r}: shift or refit")
    scale = (thresholds[HIGH] - thresholds[LOW]) / (at[HIGH] - at[LOW])
    return scale, thresholds[LOW] - scale * at[LOW]


@dataclasses.dataclass(frozen=True)
class PathMap:
    """The strict map of one scoring path (fused or alignment) and the trials behind it."""

    scale: float
    bias: float
    n_nontargets: int
    n_targets: int
    figures: dict

    def apply(self, llr: np.ndarray) -> np.ndarray:
        llr = np.asarray(llr, dtype=np.float64)
        return np.minimum(self.scale * llr + self.bias, llr)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PathMap":
        return cls(scale=float(data["scale"]), bias=float(data["bias"]), n_nontargets=int(data["n_nontargets"]),
                   n_targets=int(data["n_targets"]), figures=dict(data.get("figures") or {}))


@dataclasses.dataclass(frozen=True)
class GalleryCalibration:
    """Per scoring path, the map fitted on one gallery (a path missing keeps the shipped LLR)."""

    paths: dict

    def apply(self, llr: np.ndarray, fused: np.ndarray) -> np.ndarray:
        llr = np.asarray(llr, dtype=np.float64).copy()
        fused = np.asarray(fused, dtype=bool)
        for name, mask in (("fused", fused), ("alignment", ~fused)):
            if name in self.paths and mask.any():
                llr[mask] = self.paths[name].apply(llr[mask])
        return llr

    def to_dict(self) -> dict:
        return {name: m.to_dict() for name, m in self.paths.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "GalleryCalibration":
        return cls({name: PathMap.from_dict(m) for name, m in (data or {}).items()})


def _rates(nontargets: np.ndarray, targets: np.ndarray, thresholds: dict) -> dict:
    out = {}
    for name, threshold in thresholds.items():
        out[name] = {"far": float(np.mean(nontargets >= threshold)) if len(nontargets) else None,
                     "frr": float(np.mean(targets < threshold)) if len(targets) else None}
    return out


def gallery_trials(scorer, items_runtime: np.ndarray, items_seconds: np.ndarray, item_owner: np.ndarray,
                   profiles_enroll: np.ndarray, profiles_runtime: np.ndarray | None,
                   items_enroll: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(non-target LLRs, target LLRs) of a gallery under the shipped scoring.

    ``items_*``: one row per enrollment (its runtime-model embedding, speech seconds, and the
    index of its speaker's profile, -1 when that profile is not among those scored);
    ``profiles_*``: the stored profile vectors
    (``profiles_runtime`` None scores the alignment path). Targets (needs ``items_enroll``,
    the enrollments' enrollment-space vectors): each enrollment against its speaker's profile
    rebuilt without it, for speakers with two or more enrollments."""
    item_owner = np.asarray(item_owner, dtype=np.int64)
    llr, _ = scorer.score_candidates(items_runtime, profiles_enroll, profiles_runtime, seconds=items_seconds)
    nontargets = llr[item_owner[:, None] != np.arange(len(profiles_enroll))[None, :]]
    targets = []
    if items_enroll is not None:
        for owner in np.unique(item_owner[item_owner >= 0]):
            rows = np.flatnonzero(item_owner == owner)
            if len(rows) < 2:
                continue
            for j in rows:
                rest = rows[rows != j]
                enroll = _unit(items_enroll[rest].mean(axis=0))[None, :]
                runtime = None if profiles_runtime is None else _unit(items_runtime[rest].mean(axis=0))[None, :]
                score, _ = scorer.score_candidates(items_runtime[j:j + 1], enroll, runtime,
                                                   seconds=np.asarray(items_seconds)[j:j + 1])
                targets.append(float(score[0, 0]))
    return nontargets.astype(np.float64), np.asarray(targets, dtype=np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def fit_path(nontargets: np.ndarray, targets: np.ndarray, thresholds: dict, n_profiles: int) -> PathMap | None:
    """The strict refit map of one path, with the in-domain figures before and after; None
    for a gallery too small to estimate the tail."""
    if n_profiles < MIN_PROFILES:
        return None
    fit = fit_map(nontargets, {name: thresholds[name] for name in FAR_TARGETS}, "refit")
    if fit is None:
        return None
    scale, bias = fit
    mapped = PathMap(scale, bias, len(nontargets), len(targets), {})
    figures = {"nontarget_llr_mean": float(np.mean(nontargets)),
               "nontarget_llr_sd": float(np.std(nontargets, ddof=1)),
               "shipped": _rates(nontargets, targets, thresholds),
               "gallery": _rates(mapped.apply(nontargets), mapped.apply(targets), thresholds)}
    return dataclasses.replace(mapped, figures=figures)
