"""What every process does with the model registry before it serves (`Services.prepare`):
register the alignment artifacts found on disk and, on a database with no path in force,
put one in force from the settings. Processes starting together take turns."""
from __future__ import annotations

import logging
import pathlib

import sqlalchemy as sa

from app.errors import ApiError
from app.services.registry import SYSTEM_ACTOR, current_deployment, ensure_model, insert_deployment, register_artifact
from app.store import models

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key of the registry lock (any constant unique to this service)
REGISTRY_LOCK_KEY = 0x4E455353  # "NESS"


def lock_registry(session) -> None:
    """Make registry writers take turns until this transaction ends, so that processes
    starting together on a fresh database bootstrap exactly one deployment."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(REGISTRY_LOCK_KEY)))
    else:
        # SQLite has no advisory locks, but any write statement takes its single write
        # lock for the rest of the transaction: one that changes nothing serves as one
        session.execute(sa.text("UPDATE deployments SET id = id WHERE 0"))


def discover_artifact_dirs(*roots: pathlib.Path) -> list[pathlib.Path]:
    found = []
    for root in roots:
        if root and root.is_dir():
            found.extend(sorted(p.parent for p in root.glob("*/artifact.json")))
    return found


def register_discovered(session, roots) -> None:
    for directory in discover_artifact_dirs(*roots):
        try:
            register_artifact(session, directory)
        except sa.exc.SQLAlchemyError:
            raise  # the transaction is unusable now: going on would only fail later, obscurely
        except Exception as exc:  # a broken or foreign artifact must not stop the service
            log.warning("skipping alignment artifact %s: %s", directory, exc)


def prepare_registry(session, *, artifact_roots, enroll_model: str, runtime_model: str,
                     default_alignment: str | None) -> None:
    """Register the artifacts found on disk and, on a database with no path in force, put
    one in force (`bootstrap`), under the registry lock (held until the caller commits)."""
    lock_registry(session)
    register_discovered(session, artifact_roots)
    bootstrap(session, enroll_model=enroll_model, runtime_model=runtime_model, default_alignment=default_alignment)


def bootstrap(session, *, enroll_model: str, runtime_model: str, default_alignment: str | None) -> None:
    """A database with no path in force gets one from the settings: the default alignment
    for the configured models (or one already marked active, or the newest). Call it under
    `lock_registry` (as `prepare_registry` does): two processes bootstrapping at once would
    otherwise both find no deployment and each insert one."""
    if current_deployment(session) is not None:
        return
    for version in (enroll_model, runtime_model):
        try:
            ensure_model(session, version)
        except ApiError as exc:
            log.warning("cannot record model %s: %s", version, exc.message)
            return
    pair = dict(source_version=runtime_model, target_version=enroll_model)
    query = sa.select(models.AlignmentArtifact).filter_by(**pair).where(models.AlignmentArtifact.state != "retired")
    row = (session.scalar(query.filter_by(name=default_alignment)) if default_alignment else None) \
        or session.scalar(query.filter_by(state="active")) \
        or session.scalar(query.order_by(models.AlignmentArtifact.created_at.desc(), models.AlignmentArtifact.id.desc()))
    if row is None:
        log.warning("no alignment from %s to %s is registered: identification is unavailable until one is "
                    "trained and activated", runtime_model, enroll_model)
        return
    insert_deployment(session, row, action="bootstrap", actor=SYSTEM_ACTOR, gate=None)
