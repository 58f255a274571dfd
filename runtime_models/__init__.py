"""Runtime-side (light) speaker embedders. Imports only speechcore.

``AVAILABLE`` maps each version name to ``module:Class`` so a registry can load a model
without importing the others (each pulls torch weights on construction).
"""
AVAILABLE = {"ge2e-256": "runtime_models.ge2e:GE2EEmbedder"}
