"""Torch modules of the alignment networks (``nessa.network``), for training.

``TorchAlignment`` mirrors the numpy formulas of ``nessa.network`` and exports its params
with ``export_params`` under the same names; ``build_module`` initialises one, optionally
from a ridge or CCA solution (``nessa.lab.network_init``).
"""
from __future__ import annotations

import numpy as np

from nessa.network import ARCHITECTURES, KIND_OF


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
