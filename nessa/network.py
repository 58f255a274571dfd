"""Trained alignment networks: architectures, numpy inference, torch training modules.

Four architectures, each an artifact kind (registered in ``nessa.artifact.KINDS``):

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
Parameters are plain float32 numpy arrays with fixed names per kind; inference below is
numpy only, so loading an artifact needs neither torch nor any training state. Torch
modules mirror the same formulas (``TorchAlignment``) and export their params with
``export_params``; the linear parts can be initialised from a ridge or CCA solution.
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


# ----------------------------------------------------------------------------- numpy inference
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


def cca_branch_params(cca_params: dict, weight: float) -> dict:
    """The ``c_*`` / ``mix`` params of nn-twotower-cca from ``CCAMap.params()`` and the
    branch's score weight ``weight`` (0 < weight < 1)."""
    if not 0.0 < weight < 1.0:
        raise ValueError(f"the CCA branch weight must be between 0 and 1, got {weight}")
    return {"c_x_mean": cca_params["x_mean"], "c_x_projection": cca_params["x_projection"],
            "c_y_mean": cca_params["y_mean"], "c_y_projection": cca_params["y_projection"],
            "c_component_weights": cca_params["component_weights"],
            "mix": np.sqrt(np.array([1.0 - weight, weight]))}


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


# ----------------------------------------------------------------------------- torch modules
def _torch():
    import torch

    return torch


def build_module(arch: str, source_dim: int, target_dim: int, hidden: int = 512, shared_dim: int = 128,
                 target_hidden: int = 128, init: dict | None = None, seed: int = 0):
    """A ``TorchAlignment`` for ``arch``; ``init`` (numpy params of the same kind, possibly
    partial, e.g. a ridge/CCA solution) overrides the random initialisation."""
    torch = _torch()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {ARCHITECTURES}")
    generator = torch.Generator().manual_seed(seed)
    out_dim = shared_dim if arch == "twotower" else target_dim

    def dense(n_in, n_out, scale=1.0):
        bound = scale / np.sqrt(n_in)
        return (torch.rand(n_in, n_out, generator=generator) * 2 - 1) * bound

    shapes = {"x_mean": torch.zeros(source_dim), "x_scale": torch.ones(source_dim), "y_mean": torch.zeros(target_dim)}
    if arch in ("linear", "resmlp", "twotower"):
        shapes["weight"] = dense(source_dim, out_dim)
        shapes["bias"] = torch.zeros(out_dim)
    if arch in ("mlp", "resmlp", "twotower"):
        residual = arch != "mlp"
        shapes["w1"] = dense(source_dim, hidden, np.sqrt(6.0))  # Kaiming uniform (ReLU)
        shapes["b1"] = torch.zeros(hidden)
        # A residual branch starts at zero, so training starts from the linear solution.
        shapes["w2"] = torch.zeros(hidden, out_dim) if residual else dense(hidden, out_dim)
        shapes["b2"] = torch.zeros(out_dim)
    if arch == "twotower":
        shapes["y_scale"] = torch.ones(target_dim)
        shapes["t_weight"] = dense(target_dim, out_dim)
        shapes["t_bias"] = torch.zeros(out_dim)
        shapes["t_w1"] = dense(target_dim, target_hidden, np.sqrt(6.0))
        shapes["t_b1"] = torch.zeros(target_hidden)
        shapes["t_w2"] = torch.zeros(target_hidden, out_dim)
        shapes["t_b2"] = torch.zeros(out_dim)
    for key, value in (init or {}).items():
        if key not in shapes:
            raise ValueError(f"init param {key!r} is not a parameter of {arch}")
        value = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if tuple(value.shape) != tuple(shapes[key].shape):
            raise ValueError(f"init param {key} has shape {tuple(value.shape)}, expected {tuple(shapes[key].shape)}")
        shapes[key] = value.clone()
    return TorchAlignment(arch, shapes)


def _make_module_class():
    torch = _torch()
    nn = torch.nn
    #: statistics, not trained
    buffers = ("x_mean", "x_scale", "y_mean", "y_scale")

    class _TorchAlignment(nn.Module):
        def __init__(self, arch: str, tensors: dict):
            super().__init__()
            self.arch = arch
            self.kind = KIND_OF[arch]
            for key, value in tensors.items():
                if key in buffers:
                    self.register_buffer(key, value.float().clone())
                else:
                    setattr(self, key, nn.Parameter(value.float().clone()))

        #: training-time Gaussian noise on the standardised input (std, standardised units)
        input_noise = 0.0
        #: training-time dropout on the hidden layer
        dropout = 0.0

        def _block(self, z, prefix=""):
            w1, b1 = getattr(self, prefix + "w1"), getattr(self, prefix + "b1")
            w2, b2 = getattr(self, prefix + "w2"), getattr(self, prefix + "b2")
            hidden = torch.relu(z @ w1 + b1)
            if self.training and self.dropout:
                hidden = torch.nn.functional.dropout(hidden, self.dropout)
            return hidden @ w2 + b2

        def source(self, x):
            z = (x - self.x_mean) / self.x_scale
            if self.training and self.input_noise:
                z = z + self.input_noise * torch.randn_like(z)
            if self.arch == "linear":
                return z @ self.weight + self.bias
            if self.arch == "mlp":
                return self._block(z)
            return z @ self.weight + self.bias + self._block(z)

        def target(self, y):
            c = y - self.y_mean
            if self.arch != "twotower":
                return c
            c = c / self.y_scale
            return c @ self.t_weight + self.t_bias + self._block(c, "t_")

        def export_params(self) -> dict[str, np.ndarray]:
            return {key: value.detach().cpu().numpy().astype(np.float32).copy()
                    for key, value in self.state_dict().items()}

    return _TorchAlignment


_MODULE_CLASS = None


def TorchAlignment(arch: str, tensors: dict):  # noqa: N802 - a class factory
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _make_module_class()
    return _MODULE_CLASS(arch, tensors)


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
