"""/v1/jobs: the state of background work, for the key that started it and admin keys."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from app.errors import ApiError
from app.store import models
from app.store.job_queue import jobs
from app.web import auth
from app.web.operations import ANY_KEY, Reply, operation
from app.web.schemas import Job

bp = Blueprint("jobs", __name__)


def job_to_dict(job: models.Job, children: dict | None = None) -> dict:
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    body = {"id": job.id, "kind": job.kind, "status": job.status, "attempts": job.attempts,
            "max_attempts": job.max_attempts, "progress": job.progress, "error": job.error,
            "result": job.result, "payload": job.payload, "parent_id": job.parent_id,
            "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at)}
    if children:
        body["children"] = children
    return body


def _readable_by_this_key(job: models.Job) -> bool:
    """A job (its result may be a diarization of someone's recording) is for the key that
    created it, and admin keys."""
    return auth.current_key_is_admin() or (job.created_by_key_id is not None
                                           and job.created_by_key_id == auth.current_key_id())


@operation(bp, "GET", "/v1/jobs/<id:job_id>", access=ANY_KEY, errors=("404",), replies=Reply(200, Job),
           summary="Job status; only for the key that created the job and admin keys (any other key gets 404)")
def get_job(job_id: int):
    with current_app.extensions["nessa"].session() as session:
        job = jobs.get_job(session, job_id)
        # another key's job looks exactly like a missing one, so ids cannot be probed
        if job is None or not _readable_by_this_key(job):
            raise ApiError(404, "job_not_found", f"No job with id {job_id}.", {"id": job_id})
        return jsonify(job_to_dict(job, jobs.children_summary(session, job.id)))
