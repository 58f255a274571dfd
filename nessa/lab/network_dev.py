"""An alignment network measured and calibrated on the dev trials: its cross-model scores
and the ``scoring`` section (S-norm, fused features, duration bands) stored with it."""
from __future__ import annotations

import numpy as np

from nessa import metrics
from nessa.artifact import AlignmentArtifact
from nessa.calibration import LogisticCalibration
from nessa.lab.calibration_fit import fit_on_trials
from nessa.lab.network_config import NetworkConfig
from nessa.lab.train import AlignmentConfig, DevTrials
from nessa.network import TRANSFORMS
from speechcore.embedder import l2_normalise


def network_cross_scores(kind: str, params: dict, trials: DevTrials) -> np.ndarray:
    source_fn, target_fn = TRANSFORMS[kind]
    p32 = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    aligned = l2_normalise(source_fn(p32, l2_normalise(trials.test_source.astype(np.float32))))
    profiles = l2_normalise(target_fn(p32, l2_normalise(trials.profile_target.astype(np.float32))))
    return aligned.astype(np.float64) @ profiles.T.astype(np.float64)


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
