"""The model registry: model versions, alignment artifacts and the runtime path in force.

The `deployments` table is an append-only history; its newest row is the runtime path in
force (enrollment space + runtime model + the alignment between them). Switching inserts
one row in one transaction, so a switch is atomic for every process; a request reads the
path once (`runtime_path.ActivePath`) and uses that snapshot throughout, so it never
mixes versions. Every change is written to `registry_events` (who, what, when). What a
process does with the registry at start is `registry_startup`.
"""
from __future__ import annotations

import pathlib

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.errors import ApiError
from app.model_catalog import MODEL_SPECS, model_identity, spec_for
from app.services.artifact_check import load_checked
from app.store import models, profiles
from app.store.models import utcnow

SYSTEM_ACTOR = "system"
#: states whose models still receive new enrollments' embeddings (so a switch back or
#: forward never finds a space missing recent speakers)
LIVE_STATES = ("registered", "evaluated", "active")


def record_event(session, actor: str, action: str, subject_kind: str, subject: str, **details) -> None:
    session.add(models.RegistryEvent(actor=actor, action=action, subject_kind=subject_kind, subject=subject,
                                     details=details or None))


_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _insert_if_absent(session, table, **values) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True when this call inserted the row. Processes
    registering the same name at once then all succeed instead of one failing on the
    unique constraint (and leaving its transaction unusable)."""
    insert = _DIALECT_INSERTS[session.get_bind().dialect.name]
    # RETURNING, not rowcount: drivers report -1 for an INSERT that returns the new id
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(table.id)
    return session.execute(statement).first() is not None


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
        row.updated_at = utcnow()
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
    deleted = profiles.delete_space(session, version)
    row.state = "retired"
    row.updated_at = utcnow()
    record_event(session, actor, "retire", "model", version, profiles_deleted=deleted)
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
            state="registered", threshold=float(artifact.scorer.candidate_threshold(fused=True)),
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
    row.updated_at = utcnow()
    record_event(session, actor, "retire", "alignment", name)
    return row


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
            row.state, row.updated_at = new_state, utcnow()
    for row in session.scalars(sa.select(models.AlignmentArtifact).where(
            sa.or_(models.AlignmentArtifact.state == "active", models.AlignmentArtifact.name == deployment.alignment))):
        new_state = "active" if row.name == deployment.alignment else ("evaluated" if row.evaluation else "registered")
        if row.state != new_state:
            row.state, row.updated_at = new_state, utcnow()
            if new_state == "active":
                row.activated_at = utcnow()


def insert_deployment(session, artifact_row: models.AlignmentArtifact, *, action: str, actor: str,
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
    old = profiles.speaker_ids(session, old_space)
    new = profiles.speaker_ids(session, new_space)
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
    return insert_deployment(session, row, action="activate", actor=actor, gate=gate)


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
    return insert_deployment(session, row, action="rollback", actor=actor,
                              gate={"rolled_back_from": current.id, "restores": previous.id})


def models_overview(session) -> dict:
    """What GET /v1/models shows."""
    current = current_deployment(session)
    model_rows = session.scalars(sa.select(models.ModelVersion).order_by(models.ModelVersion.id)).all()
    artifact_rows = session.scalars(sa.select(models.AlignmentArtifact).order_by(models.AlignmentArtifact.id)).all()
    counts, bridged = profiles.counts_by_space(session)
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
