"""Alignment artifacts: registration in the database, activation, and the in-memory
copy of the active one used by the runtime path."""
from __future__ import annotations

import datetime as dt
import logging
import pathlib
import threading

import sqlalchemy as sa

from app import models
from app.errors import ApiError
from app.model_registry import model_identity
from nessa.artifact import AlignmentArtifact

log = logging.getLogger(__name__)


def _now():
    return dt.datetime.now(dt.timezone.utc)


def discover_artifact_dirs(*roots: pathlib.Path) -> list[pathlib.Path]:
    found = []
    for root in roots:
        if root and root.is_dir():
            found.extend(sorted(p.parent for p in root.glob("*/artifact.json")))
    return found


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


def register_artifact(session, directory: pathlib.Path) -> models.AlignmentArtifact:
    """Record an artifact directory in the database (idempotent by name + checksum)."""
    artifact = load_checked(directory)
    row = session.scalar(sa.select(models.AlignmentArtifact).filter_by(name=artifact.name))
    if row is not None:
        if row.sha256 != artifact.sha256:
            raise ApiError(409, "artifact_conflict",
                           f"An alignment named {artifact.name!r} with different contents is already registered.",
                           {"registered_sha256": row.sha256, "new_sha256": artifact.sha256})
        if row.path != str(directory):
            row.path = str(directory)
        return row
    row = models.AlignmentArtifact(
        name=artifact.name, source_version=artifact.source_version,
        target_version=artifact.target_version, path=str(directory), sha256=artifact.sha256,
        state="registered", threshold=float(artifact.operating_threshold),
        metrics=artifact.metrics, config=artifact.config)
    session.add(row)
    session.flush()
    return row


def activate_artifact(session, name: str) -> models.AlignmentArtifact:
    """Make `name` the one active alignment for its (source, target) pair, atomically."""
    row = session.scalar(sa.select(models.AlignmentArtifact).filter_by(name=name))
    if row is None:
        raise ApiError(404, "alignment_not_found", f"No alignment artifact named {name!r}.", {"name": name})
    session.execute(
        sa.update(models.AlignmentArtifact)
        .where(models.AlignmentArtifact.source_version == row.source_version,
               models.AlignmentArtifact.target_version == row.target_version,
               models.AlignmentArtifact.state == "active",
               models.AlignmentArtifact.id != row.id)
        .values(state="registered"))
    row.state = "active"
    row.activated_at = _now()
    return row


def register_discovered(session, roots, *, source_version: str, target_version: str,
                        default_name: str | None = None) -> None:
    """Register every artifact found under `roots`; if nothing is active yet for the
    configured model pair, activate `default_name` (or else the newest matching one)."""
    for directory in discover_artifact_dirs(*roots):
        try:
            register_artifact(session, directory)
        except Exception as exc:  # a broken artifact must not stop the service
            log.warning("skipping alignment artifact %s: %s", directory, exc)
    active = session.scalar(sa.select(models.AlignmentArtifact).filter_by(
        source_version=source_version, target_version=target_version, state="active"))
    if active is None and default_name:
        default = session.scalar(sa.select(models.AlignmentArtifact).filter_by(
            name=default_name, source_version=source_version, target_version=target_version))
        if default is not None:
            activate_artifact(session, default.name)
            return
    if active is None:
        newest = session.scalar(
            sa.select(models.AlignmentArtifact)
            .filter_by(source_version=source_version, target_version=target_version)
            .order_by(models.AlignmentArtifact.created_at.desc(), models.AlignmentArtifact.id.desc()))
        if newest is not None:
            activate_artifact(session, newest.name)


class ActiveAlignment:
    """The active artifact for one (runtime, enrollment) pair, reloaded when the
    database says another one was activated (by the CLI or another process)."""

    def __init__(self, session_factory, source_version: str, target_version: str):
        self._session_factory = session_factory
        self.source_version = source_version
        self.target_version = target_version
        self._loaded: tuple[int, AlignmentArtifact] | None = None
        self._lock = threading.Lock()

    def current_path(self) -> str:
        with self._session_factory() as session:
            path = session.scalar(sa.select(models.AlignmentArtifact.path).filter_by(
                source_version=self.source_version, target_version=self.target_version, state="active"))
        if path is None:
            raise ApiError(503, "no_active_alignment", "No active alignment.", {})
        return path

    def current(self) -> AlignmentArtifact:
        with self._session_factory() as session:
            row = session.execute(
                sa.select(models.AlignmentArtifact.id, models.AlignmentArtifact.path)
                .filter_by(source_version=self.source_version, target_version=self.target_version,
                           state="active")).first()
        if row is None:
            raise ApiError(503, "no_active_alignment",
                           f"No active alignment from {self.source_version} to {self.target_version}; "
                           "train one with `nessa align train`.",
                           {"source": self.source_version, "target": self.target_version})
        with self._lock:
            if self._loaded is None or self._loaded[0] != row.id:
                self._loaded = (row.id, load_checked(pathlib.Path(row.path)))
            return self._loaded[1]
