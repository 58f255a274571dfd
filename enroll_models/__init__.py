"""Enrollment-side (heavy) speaker embedders. Imports only speechcore.

``AVAILABLE`` maps each version name to ``module:Class`` so a registry can load a model
without importing the others (each pulls torch weights on construction).
"""
AVAILABLE = {"campplus-192": "enroll_models.campplus:CamPlusPlusEmbedder"}
