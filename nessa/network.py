"""Trained alignment networks: architectures and their numpy inference.

Four architectures, each an artifact kind (registered in ``nessa.kinds.KINDS``):

Mapping kinds compare with the centred profile vector ``y - y_mean``.

* ``nn-linear``   source -> target:  ``z @ weight + bias``
* ``nn-mlp``      source -> target:  ``relu(z @ w1 + b1) @ w2 + b2``
* ``nn-resmlp``   source -> target:  ``z @ weight + bias + relu(z @ w1 + b1) @ w2 + b2``
* ``nn-twotower`` both sides -> a shared space of ``k`` dims: the source side is a
  residual MLP as above (into k dims); the target side is ``(y - y_mean) @ t_weight +
  t_bias + relu(... @ t_w1 + t_b1) @ t_w2 + t_b2`` (profiles are transformed too).
* ``nn-twotower-cca`` a two-tower plus a fixed linear CCA branch (``c_*`` params): each
  side is ``[mix[0] * unit(tower), mix[1] * unit(cca)]``, so the cosine of two outputs is
  ``mix[0]^2 * cos_tower + mix[1]^2 * cos_cca`` (mix = [sqrt(1 - b), sqrt(b)]): the
  trained network and the linear solution it started from, averaged as scores.

``z = (x - x_mean) / x_scale`` is the standardised (L2-normalised) runtime embedding.
Parameters are plain float32 numpy arrays with fixed names per kind; inference here is
numpy only, so loading an artifact needs neither torch nor any training state (the torch
modules that train them are ``nessa.lab.torch_alignment``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ARCHITECTURES = ("linear", "mlp", "resmlp", "twotower")

#: artifact kind name for each architecture
KIND_OF = {arch: f"nn-{arch}" for arch in ARCHITECTURES}

PARAM_SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "nn-linear": {"x_mean": ("source_dim",), "x_scale": ("source_dim",), "y_mean": ("target_dim",),
                  "weight": ("source_dim", "target_dim"), "bias": ("target_dim",)},
    "nn-mlp": {"x_mean": ("source_dim",), "x_scale": ("source_dim",), "y_mean": ("target_dim",),
               "w1": ("source_dim", "h"), "b1": ("h",), "w2": ("h", "target_dim"), "b2": ("target_dim",)},
    "nn-resmlp": {"x_mean": ("source_dim",), "x_scale": ("source_dim",), "y_mean": ("target_dim",),
                  "weight": ("source_dim", "target_dim"), "bias": ("target_dim",),
                  "w1": ("source_dim", "h"), "b1": ("h",), "w2": ("h", "target_dim"), "b2": ("target_dim",)},
    "nn-twotower": {"x_mean": ("source_dim",), "x_scale": ("source_dim",),
                    "weight": ("source_dim", "k"), "bias": ("k",),
                    "w1": ("source_dim", "h"), "b1": ("h",), "w2": ("h", "k"), "b2": ("k",),
                    "y_mean": ("target_dim",), "y_scale": ("target_dim",), "t_weight": ("target_dim", "k"), "t_bias": ("k",),
                    "t_w1": ("target_dim", "g"), "t_b1": ("g",), "t_w2": ("g", "k"), "t_b2": ("k",)},
}
#: the linear CCA branch of nn-twotower-cca and the two branches' weights
CCA_BRANCH_SHAPES = {"c_x_mean": ("source_dim",), "c_x_projection": ("source_dim", "c"),
                     "c_y_mean": ("target_dim",), "c_y_projection": ("target_dim", "c"),
                     "c_component_weights": ("c",), "mix": ("two",)}
PARAM_SHAPES["nn-twotower-cca"] = {**PARAM_SHAPES["nn-twotower"], **CCA_BRANCH_SHAPES}


def _relu_block(z: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    hidden = z @ w1
    hidden += b1
    np.maximum(hidden, 0.0, out=hidden)
    out = hidden @ w2
    out += b2
    return out


def _standardise(params: dict, x: np.ndarray) -> np.ndarray:
    return (x - params["x_mean"]) / params["x_scale"]


def linear_source(params: dict, x: np.ndarray) -> np.ndarray:
    return _standardise(params, x) @ params["weight"] + params["bias"]


def mlp_source(params: dict, x: np.ndarray) -> np.ndarray:
    return _relu_block(_standardise(params, x), params["w1"], params["b1"], params["w2"], params["b2"])


def resmlp_source(params: dict, x: np.ndarray) -> np.ndarray:
    z = _standardise(params, x)
    out = _relu_block(z, params["w1"], params["b1"], params["w2"], params["b2"])
    out += z @ params["weight"]
    out += params["bias"]
    return out


def twotower_target(params: dict, y: np.ndarray) -> np.ndarray:
    c = (y - params["y_mean"]) / params["y_scale"]
    out = _relu_block(c, params["t_w1"], params["t_b1"], params["t_w2"], params["t_b2"])
    out += c @ params["t_weight"]
    out += params["t_bias"]
    return out


def centred_target(params: dict, y: np.ndarray) -> np.ndarray:
    # Mapping kinds compare in the *centred* enrollment space: the mean direction, shared
    # by every profile, only makes all cosines alike (dev: ridge 5.95 -> 5.71 % EER).
    return y - params["y_mean"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: l2_normalise without the overhead of np.linalg.norm on a
    single row (the per-query path of the service)."""
    return x / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]


def _with_cca_branch(params: dict, tower: np.ndarray, centred: np.ndarray, projection: str) -> np.ndarray:
    branch = (centred @ params[projection]) * params["c_component_weights"]
    mix = params["mix"]
    return np.concatenate([mix[0] * unit_rows(tower), mix[1] * unit_rows(branch)], axis=1)


def twotower_cca_source(params: dict, x: np.ndarray) -> np.ndarray:
    return _with_cca_branch(params, resmlp_source(params, x), x - params["c_x_mean"], "c_x_projection")


def twotower_cca_target(params: dict, y: np.ndarray) -> np.ndarray:
    return _with_cca_branch(params, twotower_target(params, y), y - params["c_y_mean"], "c_y_projection")


#: kind -> (transform_source, transform_target)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "nn-linear": (linear_source, centred_target),
    "nn-mlp": (mlp_source, centred_target),
    "nn-resmlp": (resmlp_source, centred_target),
    "nn-twotower": (resmlp_source, twotower_target),
    "nn-twotower-cca": (twotower_cca_source, twotower_cca_target),
}


def compile_source(kind: str, params: dict) -> Callable | None:
    """A faster equivalent of ``TRANSFORMS[kind][0]`` for fixed params (the per-query path of
    the service): the standardisation is folded into the first-layer weights and every
    product with the input (hidden layer, linear part, CCA branch) is one matrix product.
    Same function up to float32 rounding; None for kinds without a fast path."""
    if kind not in ("nn-resmlp", "nn-twotower", "nn-twotower-cca"):
        return None
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    inverse = 1.0 / p["x_scale"]
    shift = p["x_mean"] * inverse
    w1, weight = p["w1"] * inverse[:, None], p["weight"] * inverse[:, None]
    blocks, biases = [w1, weight], [p["b1"] - shift @ p["w1"], p["bias"] + p["b2"] - shift @ p["weight"]]
    if kind == "nn-twotower-cca":
        projection = p["c_x_projection"] * p["c_component_weights"]
        blocks.append(projection)
        biases.append(-p["c_x_mean"] @ projection)
    first = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
    first_bias = np.concatenate(biases).astype(np.float32)
    w2 = np.ascontiguousarray(params["w2"], dtype=np.float32)
    hidden_size, out_size = w1.shape[1], weight.shape[1]
    mix = params.get("mix")

    def source(x: np.ndarray) -> np.ndarray:
        h = x @ first
        h += first_bias
        hidden = h[:, :hidden_size]
        np.maximum(hidden, 0.0, out=hidden)
        out = hidden @ w2
        out += h[:, hidden_size:hidden_size + out_size]
        if mix is None:
            return out
        branch = h[:, hidden_size + out_size:]
        return np.concatenate([mix[0] * unit_rows(out), mix[1] * unit_rows(branch)], axis=1)

    return source
