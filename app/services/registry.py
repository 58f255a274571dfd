"""The model registry: model versions, alignment artifacts and the runtime path in force.

The `deployments` table is an append-only history; its newest row is the runtime path in
force (enrollment space + runtime model + the alignment between them). Switching inserts
one row in one transaction, so a switch is atomic for every process; a request reads the
path once (`ActivePath.current()`) and uses that snapshot throughout, so it never mixes
versions. Every change is written to `registry_events` (who, what, when).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import threading

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.store import models
from app.errors import ApiError
from app.model_catalog import MODEL_SPECS, model_identity, spec_for
from nessa.artifact import AlignmentArtifact

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
#: states whose models still receive new enrollments' embeddings (so a switch back or
#: forward never finds a space missing recent speakers)
LIVE_STATES = ("registered", "evaluated", "active")


def _now():
    return dt.datetime.now(dt.timezone.utc)


def record_event(session, actor: str, action: str, subject_kind: str, subject: str, **details) -> None:
    session.add(models.RegistryEvent(actor=actor, action=action, subject_kind=subject_kind, subject=subject,
                                     details=details or None))


_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
#: pg_advisory_xact_lock key of the registry lock (any constant unique to this service)
REGISTRY_LOCK_KEY = 0x4E455353  # "NESS"


def _insert_if_absent(session, table, **values) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True when this call inserted the row. Processes
    registering the same name at once then all succeed instead of one failing on the
    unique constraint (and leaving its transaction unusable)."""
    insert = _DIALECT_INSERTS[session.get_bind().dialect.name]
    # RETURNING, not rowcount: drivers report -1 for an INSERT that returns the new id
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(table.id)
    return session.execute(statement).first() is not None


def lock_registry(session) -> None:
    """Make registry writers take turns until this transaction ends, so that processes
    starting together on a fresh database bootstrap exactly one deployment."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(REGISTRY_LOCK_KEY)))
    else:
        # SQLite has no advisory locks, but any write statement takes its single write
        # lock for the rest of the transaction: one that changes nothing serves as one
        session.execute(sa.text("UPDATE deployments SET id = id WHERE 0"))


# -- model versions ------------------------------------------------------------------
def ensure_model(session, version: str, *, actor: str = SYSTEM_ACTOR, state: str = "registered") -> models.ModelVersion:
    """The row of an installed model version, recorded (and audited) the first time."""
    row = session.scalar(sa.select(models.ModelVersion).filter_by(name=version))
    if row is not None:
        return row
    try:
        spec = spec_for(version)
        identity = model_identity(version)
    except KeyError as exc:
        raise ApiError(404, "unknown_model", str(exc), {"name": version, "installed": sorted(MODEL_SPECS)}) from exc
    except Exception as exc:  # weights missing from the installed package
        raise ApiError(409, "model_weights_missing", f"model {version!r} is known but its weights are not installed: "
                       f"{exc}", {"name": version}) from exc
    inserted = _insert_if_absent(
        session, models.ModelVersion, name=version, role=spec.role, dim=spec.dim,
        weights_sha256=identity.weights_sha256, state=state,
        details={"entry_point": spec.entry_point, "weights": "/".join(spec.weights), "licence": spec.licence})
    if inserted:
        record_event(session, actor, "register", "model", version, role=spec.role, dim=spec.dim,
                     weights_sha256=identity.weights_sha256)
    return session.scalar(sa.select(models.ModelVersion).filter_by(name=version))


def register_model(session, version: str, *, actor: str) -> models.ModelVersion:
    row = ensure_model(session, version, actor=actor)
    if row.state == "retired":
        row.state = "registered"
        row.updated_at = _now()
        record_event(session, actor, "register", "model", version, revived=True)
    return row


def retire_model(session, version: str, *, actor: str) -> models.ModelVersion:
    """Retire a model that the path in force does not use: new enrollments stop being
    embedded with it and its space's profiles and embeddings are deleted."""
    row = session.scalar(sa.select(models.ModelVersion).filter_by(name=version))
    if row is None:
        raise ApiError(404, "model_not_found", f"No registered model {version!r}.", {"name": version})
    current = current_deployment(session)
    if current is not None and version in (current.enrollment_space, current.runtime_model):
        raise ApiError(409, "model_in_use", f"{version!r} is part of the runtime path in force; activate another "
                       "path first.", {"name": version, "deployment": current.id})
    speakers = set(session.scalars(sa.select(models.Profile.speaker_id).filter_by(space=version)))
    session.execute(sa.delete(models.Profile).filter_by(space=version))
    session.execute(sa.delete(models.Embedding).filter_by(space=version))
    for speaker_id in sorted(speakers):
        session.add(models.GalleryChange(space=version, speaker_id=speaker_id, op="delete"))
    row.state = "retired"
    row.updated_at = _now()
    record_event(session, actor, "retire", "model", version, profiles_deleted=len(speakers))
    return row


def live_model_versions(session) -> list[str]:
    """Model versions every new enrollment is embedded with: the path in force plus every
    registered, not retired model (an upgrade in preparation)."""
    names = set(session.scalars(sa.select(models.ModelVersion.name).where(models.ModelVersion.state.in_(LIVE_STATES))))
    current = current_deployment(session)
    if current is not None:
        names |= {current.enrollment_space, current.runtime_model}
    return sorted(n for n in names if n in MODEL_SPECS)


# -- alignment artifacts ---------------------------------------------------------------
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


def register_artifact(session, directory: pathlib.Path, *, actor: str = SYSTEM_ACTOR) -> models.AlignmentArtifact:
    """Record an artifact directory (idempotent by name + checksum). Its models are not
    registered with it: a registered model gets every new enrollment's vectors, which is
    an operator's decision (`register_model`), taken implicitly only on activation."""
    directory = pathlib.Path(directory)
    if not (directory / "artifact.json").is_file():
        raise ApiError(404, "artifact_not_found", f"No alignment artifact at {directory}.", {"path": str(directory)})
    artifact = load_checked(directory)
    if _insert_if_absent(
            session, models.AlignmentArtifact, name=artifact.name, source_version=artifact.source_version,
            target_version=artifact.target_version, path=str(directory), sha256=artifact.sha256,
            state="registered", threshold=float(artifact.candidate_threshold(fused=True)),
            metrics=artifact.metrics, config=artifact.config):
        record_event(session, actor, "register", "alignment", artifact.name, source=artifact.source_version,
                     target=artifact.target_version, sha256=artifact.sha256, path=str(directory))
    row = session.scalar(sa.select(models.AlignmentArtifact).filter_by(name=artifact.name))
    if row.sha256 != artifact.sha256:
        raise ApiError(409, "artifact_conflict",
                       f"An alignment named {artifact.name!r} with different contents is already registered.",
                       {"registered_sha256": row.sha256, "new_sha256": artifact.sha256})
    if row.path != str(directory):
        row.path = str(directory)
    return row


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


def get_artifact_row(session, name: str) -> models.AlignmentArtifact:
    row = session.scalar(sa.select(models.AlignmentArtifact).filter_by(name=name))
    if row is None:
        raise ApiError(404, "alignment_not_found", f"No alignment artifact named {name!r}.", {"name": name})
    return row


def retire_alignment(session, name: str, *, actor: str) -> models.AlignmentArtifact:
    row = get_artifact_row(session, name)
    current = current_deployment(session)
    if current is not None and current.alignment == name:
        raise ApiError(409, "alignment_in_use", f"{name!r} is the alignment in force; activate another path first.",
                       {"name": name, "deployment": current.id})
    row.state = "retired"
    row.updated_at = _now()
    record_event(session, actor, "retire", "alignment", name)
    return row


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
    """What every process does at start: register the artifacts found on disk and, on a
    database with no path in force, put one in force (`bootstrap`). Processes starting
    together take turns under the registry lock, held until the caller commits."""
    lock_registry(session)
    register_discovered(session, artifact_roots)
    bootstrap(session, enroll_model=enroll_model, runtime_model=runtime_model, default_alignment=default_alignment)


# -- deployments (the runtime path in force) --------------------------------------------
def current_deployment(session) -> models.Deployment | None:
    return session.scalar(sa.select(models.Deployment).order_by(models.Deployment.id.desc()).limit(1))


def deployment_to_dict(row: models.Deployment | None) -> dict | None:
    if row is None:
        return None
    return {"id": row.id, "enrollment_space": row.enrollment_space, "runtime_model": row.runtime_model,
            "alignment": row.alignment, "action": row.action, "actor": row.actor, "gate": row.gate,
            "created_at": row.created_at.isoformat()}


def _set_states(session, deployment: models.Deployment) -> None:
    """Keep the `state` columns in step with the path in force: its models and alignment
    are 'active'; whatever was active before falls back to evaluated/registered."""
    in_force_models = {deployment.enrollment_space, deployment.runtime_model}
    for row in session.scalars(sa.select(models.ModelVersion).where(
            sa.or_(models.ModelVersion.state == "active", models.ModelVersion.name.in_(in_force_models)))):
        new_state = "active" if row.name in in_force_models else ("evaluated" if row.evaluation else "registered")
        if row.state != new_state:
            row.state, row.updated_at = new_state, _now()
    for row in session.scalars(sa.select(models.AlignmentArtifact).where(
            sa.or_(models.AlignmentArtifact.state == "active", models.AlignmentArtifact.name == deployment.alignment))):
        new_state = "active" if row.name == deployment.alignment else ("evaluated" if row.evaluation else "registered")
        if row.state != new_state:
            row.state, row.updated_at = new_state, _now()
            if new_state == "active":
                row.activated_at = _now()


def _insert_deployment(session, artifact_row: models.AlignmentArtifact, *, action: str, actor: str,
                       gate: dict | None) -> models.Deployment:
    deployment = models.Deployment(enrollment_space=artifact_row.target_version,
                                   runtime_model=artifact_row.source_version, alignment=artifact_row.name,
                                   action=action, actor=actor, gate=gate)
    session.add(deployment)
    session.flush()
    _set_states(session, deployment)
    record_event(session, actor, action, "deployment", artifact_row.name, deployment=deployment.id,
                 enrollment_space=deployment.enrollment_space, runtime_model=deployment.runtime_model, gate=gate)
    return deployment


def space_coverage(session, new_space: str, old_space: str | None) -> dict:
    """Speakers with a profile in the space in force, and how many of them the new space lacks."""
    if old_space is None or old_space == new_space:
        return {"speakers": None, "missing": 0}
    old = set(session.scalars(sa.select(models.Profile.speaker_id).filter_by(space=old_space)))
    new = set(session.scalars(sa.select(models.Profile.speaker_id).filter_by(space=new_space)))
    missing = sorted(old - new)
    return {"speakers": len(old), "missing": len(missing), "missing_ids": missing[:20]}


def activate(session, alignment: str, *, actor: str, force: bool = False) -> models.Deployment:
    """Put the path defined by `alignment` in force, if its latest evaluation against the
    path in force passed the gate and the new enrollment space holds every enrolled
    speaker. `force` overrides both checks (recorded in the deployment's gate)."""
    row = get_artifact_row(session, alignment)
    if row.state == "retired":
        raise ApiError(409, "alignment_retired", f"{alignment!r} is retired; register it again to use it.",
                       {"name": alignment})
    for version in (row.source_version, row.target_version):
        model = ensure_model(session, version, actor=actor)
        if model.state == "retired":
            raise ApiError(409, "model_retired", f"model {version!r} is retired; register it again first.",
                           {"name": version})
    current = current_deployment(session)
    if current is not None and current.alignment == alignment:
        raise ApiError(409, "already_active", f"{alignment!r} is already the path in force.",
                       {"deployment": deployment_to_dict(current)})
    evaluation = session.scalar(sa.select(models.PathEvaluation).filter_by(alignment=alignment)
                                .order_by(models.PathEvaluation.id.desc()).limit(1))
    coverage = space_coverage(session, row.target_version, current.enrollment_space if current else None)
    gate = {"evaluation": evaluation.id if evaluation else None,
            "passed": bool(evaluation.passed) if evaluation else None,
            "baseline_alignment": evaluation.baseline_alignment if evaluation else None,
            "coverage": {k: v for k, v in coverage.items() if k != "missing_ids"}, "forced": bool(force)}
    if not force:
        baseline = current.alignment if current else None
        if evaluation is None or evaluation.baseline_alignment != baseline:
            raise ApiError(409, "not_evaluated",
                           f"{alignment!r} has no evaluation against the path in force ({baseline}); run "
                           "`nessa models evaluate` first, or activate with force.",
                           {"name": alignment, "path_in_force": baseline})
        if not evaluation.passed:
            raise ApiError(409, "gate_failed",
                           f"{alignment!r} is worse than the path in force beyond the tolerance; activate with "
                           "force to override.",
                           {"name": alignment, "candidate": evaluation.candidate, "baseline": evaluation.baseline,
                            "tolerance": evaluation.tolerance})
        if coverage["missing"]:
            raise ApiError(409, "space_incomplete",
                           f"{coverage['missing']} of {coverage['speakers']} enrolled speakers have no profile in "
                           f"{row.target_version!r} yet; re-embed (or bridge) them first.", coverage)
    return _insert_deployment(session, row, action="activate", actor=actor, gate=gate)


def rollback(session, *, actor: str) -> models.Deployment:
    """Go back to the path that was in force before the current one (no gate: it served
    before). Rolling back twice returns to where you started."""
    current = current_deployment(session)
    if current is None:
        raise ApiError(409, "nothing_to_roll_back", "No runtime path has been put in force yet.", {})
    previous = session.scalar(sa.select(models.Deployment).where(
        models.Deployment.id < current.id, models.Deployment.alignment != current.alignment)
        .order_by(models.Deployment.id.desc()).limit(1))
    if previous is None:
        raise ApiError(409, "nothing_to_roll_back", "There is no earlier runtime path to go back to.",
                       {"deployment": deployment_to_dict(current)})
    row = get_artifact_row(session, previous.alignment)
    retired = ([row.name] if row.state == "retired" else []) + list(session.scalars(
        sa.select(models.ModelVersion.name).where(
            models.ModelVersion.name.in_([row.source_version, row.target_version]),
            models.ModelVersion.state == "retired")))
    if retired:
        raise ApiError(409, "rollback_target_retired", "The earlier path uses retired parts.",
                       {"retired": retired, "deployment": deployment_to_dict(previous)})
    return _insert_deployment(session, row, action="rollback", actor=actor,
                              gate={"rolled_back_from": current.id, "restores": previous.id})


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
    _insert_deployment(session, row, action="bootstrap", actor=SYSTEM_ACTOR, gate=None)


# -- the runtime path, as requests see it --------------------------------------------------
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

    def current(self) -> RuntimePath:
        with self._session_factory() as session:
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


def models_overview(session) -> dict:
    """What GET /v1/models shows."""
    current = current_deployment(session)
    model_rows = session.scalars(sa.select(models.ModelVersion).order_by(models.ModelVersion.id)).all()
    artifact_rows = session.scalars(sa.select(models.AlignmentArtifact).order_by(models.AlignmentArtifact.id)).all()
    counts = dict(session.execute(sa.select(models.Profile.space, sa.func.count()).group_by(models.Profile.space)).all())
    bridged = dict(session.execute(sa.select(models.Profile.space, sa.func.count())
                                   .where(models.Profile.n_bridged > 0).group_by(models.Profile.space)).all())
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    return {
        "active": deployment_to_dict(current),
        "models": [{"name": m.name, "role": m.role, "dim": m.dim, "state": m.state,
                    "weights_sha256": m.weights_sha256, "profiles": counts.get(m.name, 0),
                    "bridged_profiles": bridged.get(m.name, 0), "evaluation": m.evaluation,
                    "created_at": iso(m.created_at), "updated_at": iso(m.updated_at)} for m in model_rows],
        "alignments": [{"name": a.name, "source_version": a.source_version, "target_version": a.target_version,
                        "state": a.state, "sha256": a.sha256, "threshold": a.threshold, "evaluation": a.evaluation,
                        "created_at": iso(a.created_at), "activated_at": iso(a.activated_at)} for a in artifact_rows],
    }


def history(session, limit: int = 100) -> dict:
    deployments = session.scalars(sa.select(models.Deployment).order_by(models.Deployment.id.desc()).limit(limit)).all()
    events = session.scalars(sa.select(models.RegistryEvent).order_by(models.RegistryEvent.id.desc()).limit(limit)).all()
    return {"deployments": [deployment_to_dict(d) for d in deployments],
            "events": [{"id": e.id, "actor": e.actor, "action": e.action, "subject_kind": e.subject_kind,
                        "subject": e.subject, "details": e.details, "created_at": e.created_at.isoformat()}
                       for e in events]}
