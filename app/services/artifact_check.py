"""Alignment artifacts as this installation may use them: loaded, and refused unless they
were trained for exactly the installed models."""
from __future__ import annotations

import pathlib

import numpy as np

from app.errors import ApiError
from app.model_catalog import model_identity
from nessa.artifact import AlignmentArtifact


def load_checked(directory: pathlib.Path) -> AlignmentArtifact:
    """Load an artifact and refuse it unless it was trained for exactly the installed
    models (version, dimension and weights checksum on both sides)."""
    artifact = AlignmentArtifact.load(directory)
    try:
        artifact.check_embedders(model_identity(artifact.source_version), model_identity(artifact.target_version))
    except KeyError as exc:
        raise ApiError(409, "unknown_model", str(exc), {"artifact": artifact.name}) from exc
    except Exception as exc:
        raise ApiError(409, "artifact_model_mismatch", str(exc), {"artifact": artifact.name}) from exc
    return artifact


def keeps_target_space(artifact) -> bool:
    """True when the artifact compares aligned queries with enrollment-space vectors as
    they are (ridge-style maps into the target space): such an artifact can bridge old
    vectors into that space, and the enrollment index can preselect with an aligned query.
    Shared-space kinds (two-tower, CCA) transform the profile side too."""
    probe = np.eye(artifact.target_dim, dtype=np.float32)
    try:
        return bool(np.allclose(artifact.transform_target(probe), probe, atol=1e-5))
    except Exception:
        return False
