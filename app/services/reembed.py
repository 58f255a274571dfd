"""Re-embedding campaigns: give every completed enrollment a vector in a model's space.

`start_reembed` queues one parent job; when a worker runs it, it fans out into batch
jobs (`reembed-batch`, BATCH_SIZE enrollments each) that any number of workers on any
number of hosts take from the same queue, then waits for them (the parent re-queues
itself without spending attempts) and sums up. Everything is idempotent: an enrollment
that already has a vector in the space is skipped, so a crashed worker's batch is simply
taken again, and a parent that crashed after fanning out does not fan out twice.

Enrollments whose audio was not retained cannot be embedded again; with a *bridge*
alignment (old enrollment space -> the new one, trained on paired embeddings) their old
vector is mapped into the new space and stored as a bridged embedding, which the API
reports (`bridged_profile`, `n_bridged`).
"""
from __future__ import annotations

import pathlib

import numpy as np
import soundfile as sf
import sqlalchemy as sa

from jobqueue import NotReady, PermanentJobError

from app.store.job_queue import jobs
from app.store import embeddings, models, profiles
from app.store.db import select_for_update
from app.errors import ApiError
from app.services import registry
from app.services.artifact_check import keeps_target_space
from app.services.audio_input import SAMPLE_RATE
from app.services.enrollment import is_job_subject, job_subject

REEMBED_JOB = "reembed"
REEMBED_BATCH_JOB = "reembed-batch"
BATCH_SIZE = 16
#: how often a parent looks at its children again
PARENT_POLL_SECONDS = 0.5


def start_reembed(services, version: str, *, bridge: str | None = None, actor: str,
                  created_by_key_id: int | None = None) -> models.Job:
    with services.session() as session:
        model = registry.ensure_model(session, version, actor=actor)
        if model.state == "retired":
            raise ApiError(409, "model_retired", f"model {version!r} is retired; register it again first.",
                           {"name": version})
        if bridge is not None:
            row = registry.get_artifact_row(session, bridge)
            artifact = services.paths.artifact(row.name, row.path, row.sha256)
            if artifact.target_version != version:
                raise ApiError(400, "invalid_bridge", f"bridge {bridge!r} maps into {artifact.target_version!r}, "
                               f"not {version!r}", {"bridge": bridge, "target": artifact.target_version})
            if artifact.source_version == version or not keeps_target_space(artifact):
                raise ApiError(400, "invalid_bridge", f"bridge {bridge!r} does not map another space into "
                               f"{version!r} itself (a shared-space alignment cannot bridge)", {"bridge": bridge})
        job = jobs.enqueue(session, REEMBED_JOB, {"model_version": version, "bridge": bridge},
                           max_attempts=services.settings.job_max_attempts, created_by_key_id=created_by_key_id)
        session.flush()
        registry.record_event(session, actor, "reembed", "model", version, job=job.id, bridge=bridge)
        session.commit()
        session.refresh(job)
        return job


def _pending_enrollments(session, version: str) -> list[dict]:
    """Completed enrollments without a vector in `version`'s space, as job subjects."""
    return [job_subject(e) for e in embeddings.completed_enrollments_without_vector(session, version)]


def _batch_subjects(payload: dict) -> dict[int, dict]:
    """The enrollments a batch job was created for, by id; batches queued before
    migration 0003 name only ids."""
    if "enrollments" in payload:
        return {int(s["enrollment_id"]): s for s in payload["enrollments"]}
    return {int(i): {"enrollment_id": int(i)} for i in payload["enrollment_ids"]}


def process_reembed(services, ctx) -> dict:
    """Parent job: fan out once, then wait for the children and sum up their results."""
    version, bridge = ctx.payload["model_version"], ctx.payload.get("bridge")
    with services.session() as session:
        counts = jobs.children_summary(session, ctx.job_id)
        if not counts:
            pending = _pending_enrollments(session, version)
            for start in range(0, len(pending), BATCH_SIZE):
                jobs.enqueue(session, REEMBED_BATCH_JOB,
                             {"model_version": version, "bridge": bridge,
                              "enrollments": pending[start:start + BATCH_SIZE]},
                             max_attempts=services.settings.job_max_attempts, parent_id=ctx.job_id)
            session.commit()
            counts = jobs.children_summary(session, ctx.job_id)
        total = sum(counts.values())
        finished = counts.get("succeeded", 0) + counts.get("failed", 0)
        if finished < total:
            # progress = the share of enrollments done, batches count by their own progress
            running = session.scalars(sa.select(models.Job.progress).where(
                models.Job.parent_id == ctx.job_id, models.Job.status.in_(["queued", "running"]))).all()
            done = finished + sum(p or 0.0 for p in running)
            raise NotReady(PARENT_POLL_SECONDS, progress=done / total)
        children = session.scalars(sa.select(models.Job).where(models.Job.parent_id == ctx.job_id)).all()
        failed = [c for c in children if c.status == "failed"]
        if failed:
            raise PermanentJobError(f"{len(failed)} of {total} batches failed; first error: {failed[0].error}")
        summary = {"model_version": version, "bridge": bridge, "batches": total}
        for key in ("embedded", "bridged", "already_done", "not_retained", "gone"):
            summary[key] = sum(int((c.result or {}).get(key, 0)) for c in children)
        summary["profiles"] = profiles.count(session, version)
        return summary


def process_reembed_batch(services, ctx) -> dict:
    version, bridge = ctx.payload["model_version"], ctx.payload.get("bridge")
    subjects = _batch_subjects(ctx.payload)
    ids = list(subjects)
    with services.session() as session:
        model = session.scalar(sa.select(models.ModelVersion).filter_by(name=version))
        if model is None or model.state == "retired":
            raise PermanentJobError(f"model {version!r} is not registered or was retired")
        bridge_artifact = None
        if bridge:
            row = registry.get_artifact_row(session, bridge)
            bridge_artifact = services.paths.artifact(row.name, row.path, row.sha256)
        done = embeddings.enrollments_with_vector(session, version, ids)
        rows = [e for e in session.scalars(sa.select(models.Enrollment).where(models.Enrollment.id.in_(ids)))
                if is_job_subject(e, subjects[e.id])]
        subjects = {r.id: job_subject(r) for r in rows}  # what is embedded below: checked again before storing
        old = {}
        if bridge_artifact is not None:
            old = embeddings.vectors_by_enrollment(session, bridge_artifact.source_version, ids)
    embedder = services.embedder(version)
    counts = {"embedded": 0, "bridged": 0, "already_done": len(done), "not_retained": 0, "gone": 0}
    new_vectors: dict[int, tuple[int, np.ndarray, str | None, str]] = {}
    todo = [r for r in rows if r.id not in done and r.status == "done"]
    counts["gone"] = len(ids) - len(rows)
    for i, row in enumerate(todo):
        path = pathlib.Path(row.audio_path) if row.audio_path else None
        if path is not None and path.exists():
            wav, sr = sf.read(path, dtype="float32")
            if sr != SAMPLE_RATE:
                raise PermanentJobError(f"stored audio {path} is {sr} Hz, expected {SAMPLE_RATE}")
            speech, _ = services.vad.speech_only(wav)
            new_vectors[row.id] = (row.speaker_id, embedder.embed([speech])[0], None, version)
            counts["embedded"] += 1
        elif bridge_artifact is not None and row.id in old:
            bridged = bridge_artifact.transform(old[row.id][None, :])[0]
            new_vectors[row.id] = (row.speaker_id, bridged, bridge_artifact.name, bridge_artifact.source_version)
            counts["bridged"] += 1
        else:
            counts["not_retained"] += 1
        ctx.set_progress((i + 1) / max(1, len(todo)))
    with services.session() as session:
        speakers = set()
        # checked again, and held until commit: an enrollment deleted (or replaced) while
        # we embedded gets no vector, and a concurrent delete waits for this transaction
        present = {e.id for e in select_for_update(session, sa.select(models.Enrollment).where(
            models.Enrollment.id.in_(list(new_vectors)), models.Enrollment.status == "done")).scalars()
            if is_job_subject(e, subjects[e.id])}
        have = embeddings.enrollments_with_vector(session, version, new_vectors)
        for enrollment_id, (speaker_id, vector, via, produced_by) in new_vectors.items():
            if enrollment_id not in present or enrollment_id in have:
                continue  # deleted meanwhile, or another worker finished it first
            embeddings.add(session, enrollment_id=enrollment_id, speaker_id=speaker_id, space=version,
                           vector=vector, produced_by=produced_by, via_alignment=via)
            speakers.add(speaker_id)
        session.flush()
        for speaker_id in sorted(speakers):
            profiles.refresh(session, speaker_id, space=version)
        session.commit()
    return counts
