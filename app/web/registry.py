"""/v1/models, /v1/alignments, /v1/deployments: the model registry — versions and
alignments, their evaluation, the runtime path in force and its history."""
from __future__ import annotations

import pathlib

from flask import Blueprint, current_app, jsonify

from app.services import gallery_calibration, registry
from app.services.model_jobs import submit_evaluation
from app.services.recognition import calibration_in_force
from app.services.reembed import start_reembed
from app.web.auth import current_actor, current_key_id
from app.web.jobs import job_to_dict
from app.web.operations import Reply, operation
from app.web.schemas import (AlignmentEvaluation, AlignmentList, Deployment, History, HistoryQuery, JobAccepted,
                             NewAlignment, NewDeployment, NewModel, Reembedding, RegisteredAlignment, Registry)

bp = Blueprint("registry", __name__)


def _services():
    return current_app.extensions["nessa"]


def _accepted(job):
    return jsonify({"job": job_to_dict(job)}), 202, {"Location": f"/v1/jobs/{job.id}"}


# -- model versions ------------------------------------------------------------------
@operation(bp, "GET", "/v1/models", access="identify", replies=Reply(200, Registry),
           summary="The runtime path in force, model versions and alignments with their states")
def list_models():
    services = _services()
    with services.session() as session:
        overview = registry.models_overview(session)
    return jsonify({**overview, "calibration": calibration_in_force(services)})


@operation(bp, "GET", "/v1/models/history", access="admin", query=HistoryQuery, replies=Reply(200, History),
           summary="Deployments and the registry's audit log (admin)")
def models_history(query: HistoryQuery):
    with _services().session() as session:
        return jsonify(registry.history(session, query.limit))


@operation(bp, "POST", "/v1/models", access="admin", body=NewModel, errors=("404", "409"),
           replies=Reply(201, Registry, "Registered"), summary="Register an installed model version (admin)")
def register_model(body: NewModel):
    with _services().session() as session:
        registry.register_model(session, body.name, actor=current_actor())
        session.commit()
        return jsonify(registry.models_overview(session)), 201


@operation(bp, "POST", "/v1/models/<name:name>/retire", access="admin", errors=("404", "409"),
           replies=Reply(200, Registry, "The registry"),
           summary="Retire a model version not in force; its space's vectors are deleted (admin)")
def retire_model(name: str):
    services = _services()
    with services.session() as session:
        registry.retire_model(session, name, actor=current_actor())
        session.commit()
        overview = registry.models_overview(session)
    services.gallery.sync()
    return jsonify(overview)


@operation(bp, "POST", "/v1/models/<name:name>/reembed", access="admin", body=Reembedding, errors=("404", "409"),
           replies=Reply(202, JobAccepted, "The parent job; progress at /v1/jobs/{id}"),
           summary="Re-embed every retained enrollment with a model, in background jobs (admin)")
def reembed_model(name: str, body: Reembedding):
    return _accepted(start_reembed(_services(), name, bridge=body.bridge, actor=current_actor(),
                                   created_by_key_id=current_key_id()))


# -- alignments ----------------------------------------------------------------------
@operation(bp, "GET", "/v1/alignments", access="identify", replies=Reply(200, AlignmentList),
           summary="Registered alignment artifacts")
def list_alignments():
    with _services().session() as session:
        return jsonify({"alignments": registry.models_overview(session)["alignments"]})


@operation(bp, "POST", "/v1/alignments", access="admin", body=NewAlignment, errors=("404", "409"),
           replies=Reply(201, RegisteredAlignment, "Registered"),
           summary="Register an alignment artifact directory (admin)")
def register_alignment(body: NewAlignment):
    with _services().session() as session:
        row = registry.register_artifact(session, pathlib.Path(body.path), actor=current_actor())
        session.commit()
        return jsonify({"name": row.name, "state": row.state, "source_version": row.source_version,
                        "target_version": row.target_version, "sha256": row.sha256}), 201


@operation(bp, "POST", "/v1/alignments/<name:name>/evaluate", access="admin", body=AlignmentEvaluation,
           errors=("404", "409"), replies=Reply(202, JobAccepted, "A job; its result is the evaluation"),
           summary="Measure an alignment's path against the path in force, same trials (admin)")
def evaluate_alignment(name: str, body: AlignmentEvaluation):
    options = {field: getattr(body, field) for field in ("n_enroll", "max_speakers", "max_queries", "crops")
               if getattr(body, field) is not None}
    tolerance = {field.removeprefix("tolerance_"): getattr(body, field)
                 for field in ("tolerance_eer_points", "tolerance_top1_points") if getattr(body, field) is not None}
    return _accepted(submit_evaluation(_services(), name, eval_dir=body.eval_dir, options=options,
                                       tolerance=tolerance, actor=current_actor(),
                                       created_by_key_id=current_key_id()))


@operation(bp, "POST", "/v1/alignments/<name:name>/retire", access="admin", errors=("404", "409"),
           replies=Reply(200, Registry, "The registry"),
           summary="Retire an alignment that is not in force (admin)")
def retire_alignment(name: str):
    with _services().session() as session:
        registry.retire_alignment(session, name, actor=current_actor())
        session.commit()
        return jsonify(registry.models_overview(session))


# -- deployments ---------------------------------------------------------------------
@operation(bp, "POST", "/v1/deployments", access="admin", body=NewDeployment, errors=("404", "409"),
           replies=Reply(201, Deployment, "The new deployment"),
           summary="Put an alignment's runtime path in force, gated by its evaluation (admin)")
def activate_path(body: NewDeployment):
    with _services().session() as session:
        deployment = registry.activate(session, body.alignment, actor=current_actor(), force=body.force)
        session.commit()
        body = registry.deployment_to_dict(deployment)
    gallery_calibration.schedule_if_due(_services())  # a new path: its gallery calibration is due
    return jsonify(body), 201


@operation(bp, "POST", "/v1/deployments/rollback", access="admin", errors=("409",),
           replies=Reply(201, Deployment, "The new deployment"),
           summary="Go back to the path in force before the current one (admin)")
def rollback_path():
    with _services().session() as session:
        deployment = registry.rollback(session, actor=current_actor())
        session.commit()
        body = registry.deployment_to_dict(deployment)
    gallery_calibration.schedule_if_due(_services())
    return jsonify(body), 201
