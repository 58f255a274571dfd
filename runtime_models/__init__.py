"""Runtime-side (light) speaker embedders. Imports only speechcore.

``AVAILABLE`` maps each version name to ``module:Class`` so a registry can load a model
without importing the others (each pulls torch weights on construction).
"""
AVAILABLE = {
    "ge2e-256": "runtime_models.ge2e:GE2EEmbedder",
    # the same GE2E network on onnxruntime; weights: runtime_models/onnx/*.onnx (committed)
    "ge2e-256-onnx": "runtime_models.ge2e_onnx:GE2EOnnxEmbedder",
    "ge2e-256-onnx-int8": "runtime_models.ge2e_onnx:GE2EOnnxInt8Embedder",
}
