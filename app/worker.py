"""The service's job worker: its job kinds wired to their handlers, and what a job's
final failure or a lost worker means for its enrollment or recording (the loop itself is
jobqueue.Worker). `nessa worker` runs one; `nessa serve --with-worker` runs one in-process.
Run as many as you like, on as many hosts as share the PostgreSQL database."""
from __future__ import annotations

import logging
import os
import socket

from jobqueue import PermanentJobError, Worker

from app.services import diarization, enrollment, gallery_calibration, model_jobs, reembed, retention
from app.store.job_queue import jobs

log = logging.getLogger(__name__)


def _is_final_failure(exc: Exception, ctx) -> bool:
    return isinstance(exc, PermanentJobError) or ctx.attempt >= ctx.max_attempts


def _enrollment_handler(services):
    def handle(ctx):
        try:
            return enrollment.process_enrollment(services, ctx)
        except Exception as exc:
            if _is_final_failure(exc, ctx):
                enrollment_id = ctx.payload["enrollment_id"]
                enrollment.mark_enrollment_failed(services, enrollment_id, str(exc))
                _release_failed_enrollment_audio(services, enrollment_id)
            raise

    return handle


def _release_failed_enrollment_audio(services, enrollment_id: int) -> None:
    with services.session() as session:
        audio_path = retention.release_failed_enrollment_audio(session, enrollment_id)
        session.commit()
    retention.remove_audio(audio_path)


def _diarize_handler(services):
    def handle(ctx):
        try:
            return diarization.process_diarize_job(services, ctx)
        except Exception as exc:
            if _is_final_failure(exc, ctx):  # nobody will run it again: its recording goes now
                retention.remove_audio(ctx.payload.get("audio_path"))
            raise

    return handle


def _job_lost(session, kind: str, payload: dict) -> None:
    """A job given up because its workers kept dying: fail its enrollment in the same
    transaction, so the enrollment never stays 'processing' forever. Its audio goes too:
    the decision is final (no attempts left), so the file can go before the commit."""
    if kind == enrollment.ENROLL_JOB:
        enrollment.fail_enrollment_in(session, payload["enrollment_id"], "the worker was lost on every attempt")
        retention.remove_audio(retention.release_failed_enrollment_audio(session, payload["enrollment_id"]))
    elif kind == diarization.DIARIZE_JOB:
        retention.remove_audio(payload.get("audio_path"))


class MaintainingWorker(Worker):
    """A job worker that also runs the service's maintenance (retention.Maintenance)
    between jobs: at start, then periodically."""

    def __init__(self, services, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._maintenance = retention.Maintenance(services)

    def between_jobs(self) -> None:
        self._maintenance.run_if_due()


def build_worker(services, *, worker_id: str | None = None) -> Worker:
    handlers = {enrollment.ENROLL_JOB: _enrollment_handler(services),
                diarization.DIARIZE_JOB: _diarize_handler(services),
                reembed.REEMBED_JOB: lambda ctx: reembed.process_reembed(services, ctx),
                reembed.REEMBED_BATCH_JOB: lambda ctx: reembed.process_reembed_batch(services, ctx),
                model_jobs.EVALUATE_JOB: lambda ctx: model_jobs.process_evaluation(services, ctx),
                gallery_calibration.CALIBRATE_JOB: lambda ctx: gallery_calibration.process_calibration(services, ctx)}
    return MaintainingWorker(services, jobs, services.session_factory, handlers,
                             worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}",
                             lease_seconds=services.settings.job_lease_seconds,
                             poll_seconds=services.settings.worker_poll_seconds, on_lost=_job_lost)


def run_pending(services, *, worker_id: str, wait: bool = False, timeout_s: float = 600,
                max_jobs: int = 100_000) -> int:
    """Run the service's queued jobs in this thread until none is runnable (tests,
    benchmarks, one-shot tools); see jobqueue.Worker.run_until_idle."""
    return build_worker(services, worker_id=worker_id).run_until_idle(wait=wait, timeout_s=timeout_s,
                                                                       max_jobs=max_jobs)
