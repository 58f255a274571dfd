"""Initial params of the alignment networks from linear solutions (``nessa.lab.linear``)."""
from __future__ import annotations

import numpy as np


def ridge_init(ridge_params: dict) -> dict:
    """nn-linear / nn-resmlp init from ``RidgeMap.params()``: predicts ``y - y_mean``."""
    return {"x_mean": ridge_params["x_mean"], "x_scale": ridge_params["x_scale"], "weight": ridge_params["weight"],
            "y_mean": ridge_params["y_mean"]}


def cca_init(cca_params: dict, x_scale: np.ndarray, y_scale: np.ndarray) -> dict:
    """nn-twotower init from ``CCAMap.params()``: both linear parts are the weighted CCA
    projections, re-expressed for per-dimension standardised inputs (``x_scale``/``y_scale``)."""
    weights = np.asarray(cca_params["component_weights"])
    return {"x_mean": cca_params["x_mean"], "x_scale": x_scale,
            "weight": cca_params["x_projection"] * weights * np.asarray(x_scale)[:, None],
            "y_mean": cca_params["y_mean"], "y_scale": y_scale,
            "t_weight": cca_params["y_projection"] * weights * np.asarray(y_scale)[:, None]}


def cca_branch_params(cca_params: dict, weight: float) -> dict:
    """The ``c_*`` / ``mix`` params of nn-twotower-cca from ``CCAMap.params()`` and the
    branch's score weight ``weight`` (0 < weight < 1)."""
    if not 0.0 < weight < 1.0:
        raise ValueError(f"the CCA branch weight must be between 0 and 1, got {weight}")
    return {"c_x_mean": cca_params["x_mean"], "c_x_projection": cca_params["x_projection"],
            "c_y_mean": cca_params["y_mean"], "c_y_projection": cca_params["y_projection"],
            "c_component_weights": cca_params["component_weights"],
            "mix": np.sqrt(np.array([1.0 - weight, weight]))}
