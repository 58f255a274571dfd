"""NESSA alignment between a light runtime embedding space and a heavy enrollment space.

The serving core: ``nessa.artifact`` (load a trained alignment, its transforms and
checksums), ``nessa.scoring`` (score queries against profiles with it: S-norm, duration
bands, calibration) and what they build on (``kinds``, ``network``, ``calibration``,
``metrics``). Training and measuring alignments is ``nessa.lab``. Embedders are always
passed in.
"""
from nessa.artifact import AlignmentArtifact, ArtifactError, ArtifactIntegrityError

__all__ = ["AlignmentArtifact", "ArtifactError", "ArtifactIntegrityError"]
