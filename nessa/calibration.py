"""Score calibration and fusion: a linear map from raw scores to log-likelihood ratios.

One ``LogisticCalibration`` handles both uses: with one feature (the cross-model cosine)
it is the calibration for profiles that only have an enrollment-space vector; with two
or more features (symmetric runtime cosine, cross-model cosine, ...) it is the fusion.
``weights . features + bias`` is a log-likelihood ratio; fitting it is
``nessa.lab.calibration_fit``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

#: decision thresholds stored with every calibration, keyed by name
FAR_TARGETS = {"far_1pct": 0.01, "far_0.1pct": 0.001}
THRESHOLD_NAMES = ("far_1pct", "far_0.1pct", "eer")


def threshold_name(far_target: float) -> str:
    """The name of the stored threshold chosen for a false-accept rate (0.01 -> far_1pct)."""
    for name, rate in FAR_TARGETS.items():
        if abs(far_target - rate) <= 1e-9:
            return name
    raise ValueError(f"no operating point for a false-accept rate of {far_target}: "
                     f"one of {sorted(FAR_TARGETS.values(), reverse=True)}")


@dataclasses.dataclass(frozen=True)
class LogisticCalibration:
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    #: prior the regression was trained at (the LLR itself does not depend on it)
    training_prior: float = 0.5
    #: threshold name -> LLR threshold; accept when ``llr >= threshold``
    thresholds: dict = dataclasses.field(default_factory=dict)
    default_threshold: str = "far_0.1pct"

    def llr(self, *feature_values) -> np.ndarray:
        """Calibrated log-likelihood ratio; one array (or scalar) per feature, in order."""
        if len(feature_values) != len(self.features):
            raise ValueError(f"expected {len(self.features)} feature(s) {self.features}, got {len(feature_values)}")
        total = self.weights[0] * np.asarray(feature_values[0], dtype=np.float64) + self.bias
        for weight, values in zip(self.weights[1:], feature_values[1:]):
            total += weight * np.asarray(values, dtype=np.float64)
        return total

    def threshold(self, name: str | None = None) -> float:
        return float(self.thresholds[name or self.default_threshold])

    def raw_threshold(self, name: str | None = None) -> float:
        """For a one-feature calibration: the raw score at which the LLR reaches a threshold."""
        if len(self.features) != 1:
            raise ValueError("a raw-score threshold exists only for a one-feature calibration")
        return (self.threshold(name) - self.bias) / self.weights[0]

    def to_dict(self) -> dict:
        out = {"kind": "logistic", "features": list(self.features), "weights": list(self.weights),
               "bias": self.bias, "training_prior": self.training_prior,
               "thresholds": dict(self.thresholds), "default_threshold": self.default_threshold}
        if len(self.features) == 1:
            out["raw_thresholds"] = {name: self.raw_threshold(name) for name in self.thresholds}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LogisticCalibration":
        if data.get("kind", "logistic") != "logistic":
            raise ValueError(f"unknown calibration kind {data.get('kind')!r}")
        return cls(features=tuple(data["features"]), weights=tuple(float(w) for w in data["weights"]),
                   bias=float(data["bias"]), training_prior=float(data.get("training_prior", 0.5)),
                   thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
                   default_threshold=data.get("default_threshold", "far_0.1pct"))

    def with_thresholds(self, thresholds: dict, default_threshold: str | None = None) -> "LogisticCalibration":
        return dataclasses.replace(self, thresholds=dict(thresholds),
                                   default_threshold=default_threshold or self.default_threshold)
