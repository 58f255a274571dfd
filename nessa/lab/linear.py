"""Linear alignments between two embedding spaces.

``RidgeMap``: source -> target regression (what ships). ``CCAMap``: a regularised CCA
shared space into which both sides are projected (kept for the NESSA comparison).
Both are closed form and deterministic; all fitting is done in float64.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from speechcore.embedder import l2_normalise


@dataclasses.dataclass(frozen=True)
class RidgeMap:
    """``y = ((x - x_mean) / x_scale) @ weight + y_mean`` (before L2 normalisation)."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    weight: np.ndarray
    y_mean: np.ndarray
    #: regularisation relative to the number of training pairs (alpha = relative_alpha * n)
    relative_alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return ((x - self.x_mean) / self.x_scale) @ self.weight + self.y_mean

    def params(self) -> dict[str, np.ndarray]:
        return {"x_mean": self.x_mean, "x_scale": self.x_scale, "weight": self.weight, "y_mean": self.y_mean}


class RidgeSolver:
    """Ridge for many regularisation strengths from one eigendecomposition.

    Inputs are standardised (per-dimension mean and standard deviation) so that one
    penalty treats every dimension alike; targets are mean-centred so the intercept is
    not penalised. ``alpha`` is scaled by the number of pairs, which keeps a chosen
    value meaningful when the training set grows (dev fit -> final fit on everything).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"need paired 2-D arrays, got {x.shape} and {y.shape}")
        self.n = len(x)
        self.x_mean = x.mean(axis=0)
        self.x_scale = np.maximum(x.std(axis=0), 1e-8)
        self.y_mean = y.mean(axis=0)
        z = (x - self.x_mean) / self.x_scale
        gram = z.T @ z
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(gram)
        self.eigenvalues = np.maximum(self.eigenvalues, 0.0)
        self.projected_cross = self.eigenvectors.T @ (z.T @ (y - self.y_mean))

    def solve(self, relative_alpha: float) -> RidgeMap:
        alpha = relative_alpha * self.n
        weight = self.eigenvectors @ (self.projected_cross / (self.eigenvalues + alpha)[:, None])
        return RidgeMap(x_mean=self.x_mean.copy(), x_scale=self.x_scale.copy(), weight=weight,
                        y_mean=self.y_mean.copy(), relative_alpha=float(relative_alpha))


def fit_ridge(x: np.ndarray, y: np.ndarray, relative_alpha: float) -> RidgeMap:
    return RidgeSolver(x, y).solve(relative_alpha)


@dataclasses.dataclass(frozen=True)
class CCAMap:
    """Both spaces projected onto the leading canonical directions, weighted per component."""

    x_mean: np.ndarray
    x_projection: np.ndarray
    y_mean: np.ndarray
    y_projection: np.ndarray
    component_weights: np.ndarray
    correlations: np.ndarray
    shrinkage: float

    def transform_source(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return ((x - self.x_mean) @ self.x_projection) * self.component_weights

    def transform_target(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        return ((y - self.y_mean) @ self.y_projection) * self.component_weights

    def params(self) -> dict[str, np.ndarray]:
        return {"x_mean": self.x_mean, "x_projection": self.x_projection, "y_mean": self.y_mean,
                "y_projection": self.y_projection, "component_weights": self.component_weights}


def _inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def _shrunk_covariance(centred: np.ndarray, shrinkage: float) -> np.ndarray:
    covariance = centred.T @ centred / len(centred)
    target = np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return (1.0 - shrinkage) * covariance + shrinkage * target


def fit_cca(x: np.ndarray, y: np.ndarray, n_components: int, shrinkage: float,
            weighting: str = "sqrt_rho") -> CCAMap:
    """Regularised CCA: each covariance shrunk towards a scaled identity.

    ``weighting`` scales each canonical component in the shared space: ``sqrt_rho``
    (the team's best setting), ``rho`` or ``none``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    whiten_x = _inverse_sqrt(_shrunk_covariance(xc, shrinkage))
    whiten_y = _inverse_sqrt(_shrunk_covariance(yc, shrinkage))
    cross = whiten_x @ (xc.T @ yc / len(x)) @ whiten_y
    left, correlations, right_t = np.linalg.svd(cross, full_matrices=False)
    k = min(n_components, len(correlations))
    # Fix each component's sign (SVD leaves it free) so fits are reproducible.
    signs = np.sign(left[np.abs(left[:, :k]).argmax(axis=0), np.arange(k)])
    x_projection = whiten_x @ left[:, :k] * signs
    y_projection = whiten_y @ right_t[:k].T * signs
    rho = correlations[:k]
    weights = {"sqrt_rho": np.sqrt(rho), "rho": rho, "none": np.ones(k)}[weighting]
    return CCAMap(x_mean=x_mean, x_projection=x_projection, y_mean=y_mean, y_projection=y_projection,
                  component_weights=weights, correlations=rho, shrinkage=float(shrinkage))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the matching row of ``b``."""
    return np.sum(l2_normalise(a) * l2_normalise(b), axis=1)
