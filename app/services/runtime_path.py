"""The runtime path in force, as requests see it: one snapshot per request, from the
newest deployment, with its alignment artifact loaded once per process."""
from __future__ import annotations

import dataclasses
import pathlib
import threading

import sqlalchemy as sa

from app.errors import ApiError
from app.services.artifact_check import load_checked
from app.services.registry import current_deployment, get_artifact_row
from app.store import models
from nessa.artifact import AlignmentArtifact


@dataclasses.dataclass(frozen=True)
class RuntimePath:
    """One consistent snapshot of the path in force; a request uses exactly one."""

    deployment_id: int
    enrollment_space: str
    runtime_model: str
    artifact: AlignmentArtifact

    def versions(self) -> dict:
        return {"deployment": self.deployment_id, "runtime_model": self.runtime_model,
                "enrollment_space": self.enrollment_space, "alignment": self.artifact.name}


class ActivePath:
    """Reads the newest deployment (one small query) and keeps loaded artifacts by name."""

    def __init__(self, session_factory):
        self._session_factory = session_factory
        self._artifacts: dict[tuple[str, str], AlignmentArtifact] = {}
        self._lock = threading.Lock()

    def current(self, session=None) -> RuntimePath:
        """The path in force, read in `session` (the caller's request) or a session of its own."""
        if session is None:
            with self._session_factory() as own_session:
                return self.current(own_session)
        row = session.execute(
            sa.select(models.Deployment.id, models.Deployment.enrollment_space, models.Deployment.runtime_model,
                      models.AlignmentArtifact.name, models.AlignmentArtifact.path, models.AlignmentArtifact.sha256)
            .join(models.AlignmentArtifact, models.AlignmentArtifact.name == models.Deployment.alignment)
            .order_by(models.Deployment.id.desc()).limit(1)).first()
        if row is None:
            raise ApiError(503, "no_active_alignment",
                           "No runtime path is in force: train an alignment with `nessa align train` and activate "
                           "it with `nessa models activate`.", {})
        return RuntimePath(row.id, row.enrollment_space, row.runtime_model, self.artifact(row.name, row.path, row.sha256))

    def artifact(self, name: str, path: str, sha256: str) -> AlignmentArtifact:
        with self._lock:
            key = (name, sha256)
            if key not in self._artifacts:
                artifact = load_checked(pathlib.Path(path))
                if artifact.sha256 != sha256:
                    raise ApiError(409, "artifact_changed", f"the files of alignment {name!r} changed after it was "
                                   "registered", {"name": name, "registered": sha256, "on_disk": artifact.sha256})
                self._artifacts[key] = artifact
            return self._artifacts[key]

    def current_path(self) -> str:
        with self._session_factory() as session:
            current = current_deployment(session)
            if current is None:
                raise ApiError(503, "no_active_alignment", "No runtime path is in force.", {})
            return get_artifact_row(session, current.alignment).path

    def load(self, name: str) -> AlignmentArtifact:
        with self._session_factory() as session:
            row = get_artifact_row(session, name)
            return self.artifact(row.name, row.path, row.sha256)
