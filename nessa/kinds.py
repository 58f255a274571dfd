"""Alignment kinds: how an artifact's params turn embeddings into comparable vectors.

Adding a kind means adding one entry to ``KINDS``: its param shapes and its two transforms.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from nessa.network import PARAM_SHAPES, TRANSFORMS


@dataclasses.dataclass(frozen=True)
class AlignmentKind:
    #: param name -> shape, with "source_dim" / "target_dim" / "k" as symbolic sizes
    param_shapes: dict[str, tuple[str, ...]]
    #: (params, runtime embeddings) -> vectors in the comparison space (before normalising)
    transform_source: Callable[[dict, np.ndarray], np.ndarray]
    #: (params, enrollment embeddings) -> vectors in the same comparison space
    transform_target: Callable[[dict, np.ndarray], np.ndarray]


def _ridge_source(params: dict, x: np.ndarray) -> np.ndarray:
    # The predicted deviation from the enrollment-space mean; y_mean is left out on
    # purpose (see KINDS["ridge"]).
    return ((x - params["x_mean"]) / params["x_scale"]) @ params["weight"]


def _cca_source(params: dict, x: np.ndarray) -> np.ndarray:
    return ((x - params["x_mean"]) @ params["x_projection"]) * params["component_weights"]


def _cca_target(params: dict, y: np.ndarray) -> np.ndarray:
    return ((y - params["y_mean"]) @ params["y_projection"]) * params["component_weights"]


KINDS: dict[str, AlignmentKind] = {
    # Regression into the enrollment space; profiles' enrollment vectors are used as is.
    # The aligned query is the predicted deviation from the enrollment-space mean, without
    # the mean: ridge shrinks predictions towards the mean, which every profile shares, so
    # keeping it makes all cosines alike. Dropping it cut the 5-fold dev cross-model EER
    # from 9.3 % to 7.4 % (fused EER unchanged) while a plain dot product with the stored
    # profile vectors stays the right score.
    "ridge": AlignmentKind(
        param_shapes={"x_mean": ("source_dim",), "x_scale": ("source_dim",),
                      "weight": ("source_dim", "target_dim"), "y_mean": ("target_dim",)},
        transform_source=_ridge_source, transform_target=lambda params, y: y),
    # Shared space: both sides are projected onto k canonical components.
    "cca": AlignmentKind(
        param_shapes={"x_mean": ("source_dim",), "x_projection": ("source_dim", "k"),
                      "y_mean": ("target_dim",), "y_projection": ("target_dim", "k"),
                      "component_weights": ("k",)},
        transform_source=_cca_source, transform_target=_cca_target),
    # The trained alignment networks (nessa.network): nn-linear, nn-mlp, nn-resmlp,
    # nn-twotower, nn-twotower-cca.
    **{kind: AlignmentKind(param_shapes=shapes, transform_source=TRANSFORMS[kind][0],
                           transform_target=TRANSFORMS[kind][1])
       for kind, shapes in PARAM_SHAPES.items()},
}
