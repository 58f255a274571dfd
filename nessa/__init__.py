"""NESSA alignment between a light runtime embedding space and a heavy enrollment space.

``nessa.artifact`` (load and apply trained alignments) is what the service needs;
``nessa.train`` / ``nessa.cli_support`` train them, ``nessa.metrics`` and
``nessa.calibration`` measure and calibrate scores. Embedders are always passed in.
"""
from nessa.artifact import AlignmentArtifact, ArtifactError, ArtifactIntegrityError

__all__ = ["AlignmentArtifact", "ArtifactError", "ArtifactIntegrityError"]
