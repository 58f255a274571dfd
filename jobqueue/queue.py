"""The job queue over one ORM model that the application defines (its table, its schema
and migrations stay the application's).

The model needs these mapped attributes: ``id`` (integer primary key), ``kind``,
``payload`` and ``result`` (JSON), ``status`` (one of STATUSES), ``attempts``,
``max_attempts``, ``parent_id`` (nullable, a job's parent), ``worker_id``, ``progress``,
``error``, and the timestamps ``run_after``, ``lease_expires_at``, ``heartbeat_at``,
``started_at``, ``finished_at``, which must come back timezone-aware in UTC.

complete/fail/heartbeat/postpone only touch a job still ``running`` under the caller's
worker_id, so a worker whose lease was taken over cannot overwrite the new owner.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from jobqueue.claiming import ClaimedJob, LostHandler, claim_next
from jobqueue.clock import database_now

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed")


class JobQueue:
    """Jobs of ``model``. A retried job waits ``retry_backoff_base_seconds * 2**(attempt-1)``
    seconds, at most ``retry_backoff_max_seconds``."""

    def __init__(self, model, *, retry_backoff_base_seconds: float = 1.0,
                 retry_backoff_max_seconds: float = 60.0):
        self.model = model
        self.retry_backoff_base_seconds = float(retry_backoff_base_seconds)
        self.retry_backoff_max_seconds = float(retry_backoff_max_seconds)

    # --- in the caller's transaction ----------------------------------------------------

    def enqueue(self, session: Session, kind: str, payload: dict, *, max_attempts: int = 3,
                parent_id: int | None = None, **columns: Any):
        """Add a job to ``session``; it becomes visible to workers when the caller commits.
        ``columns``: values for the application's own columns of the model."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        job = self.model(kind=kind, payload=dict(payload), status="queued", attempts=0,
                         max_attempts=max_attempts, run_after=database_now(session),
                         parent_id=parent_id, **columns)
        session.add(job)
        return job

    def get_job(self, session: Session, job_id: int):
        return session.get(self.model, job_id)

    def children_summary(self, session: Session, parent_id: int) -> dict[str, int]:
        """How many children of a job are in each status."""
        model = self.model
        rows = session.execute(sa.select(model.status, sa.func.count()).where(model.parent_id == parent_id)
                               .group_by(model.status)).all()
        return {status: count for status, count in rows}

    def unfinished_count(self, session: Session, kinds: Iterable[str] | None = None) -> int:
        """Jobs queued (now or for later) or running (of these kinds, when given)."""
        model = self.model
        query = sa.select(sa.func.count()).select_from(model).where(model.status.in_(["queued", "running"]))
        if kinds is not None:
            query = query.where(model.kind.in_(list(kinds)))
        return session.scalar(query)

    # --- a worker's own transactions ----------------------------------------------------

    def claim_next(self, session_factory: sessionmaker[Session], worker_id: str, *,
                   lease_seconds: float, kinds: Iterable[str] | None = None,
                   on_lost: LostHandler | None = None) -> ClaimedJob | None:
        """The oldest runnable job, now held by ``worker_id``; None when nothing is runnable
        (see jobqueue.claiming)."""
        return claim_next(self.model, session_factory, worker_id, lease_seconds=lease_seconds,
                          kinds=kinds, on_lost=on_lost)

    def heartbeat(self, session_factory: sessionmaker[Session], job_id: int, worker_id: str, *,
                  lease_seconds: float, progress: float | None = None) -> bool:
        """Extend the lease (and record progress). False if the job is no longer ours."""
        with session_factory() as session:
            now = database_now(session)
            values: dict[str, Any] = {"lease_expires_at": now + dt.timedelta(seconds=lease_seconds),
                                      "heartbeat_at": now}
            if progress is not None:
                values["progress"] = float(progress)
            updated = self._update_held(session, job_id, worker_id, values)
            session.commit()
            return updated == 1

    def complete(self, session_factory: sessionmaker[Session], job_id: int, worker_id: str,
                 result: dict | None) -> bool:
        """Mark the job succeeded. False (and nothing changed) if it is no longer ours."""
        with session_factory() as session:
            now = database_now(session)
            updated = self._update_held(session, job_id, worker_id, {
                "status": "succeeded", "result": result, "error": None, "progress": 1.0,
                "finished_at": now, "lease_expires_at": None, "heartbeat_at": now})
            session.commit()
        if updated != 1:
            log.warning("job %s: not completed by %s, its lease was taken over", job_id, worker_id)
        return updated == 1

    def fail(self, session_factory: sessionmaker[Session], job_id: int, worker_id: str, error: str, *,
             retry: bool) -> bool:
        """Record a failed attempt. With ``retry`` and attempts left, the job is queued again
        after a backoff; otherwise it is failed for good. False if it is no longer ours."""
        model = self.model
        with session_factory() as session:
            now = database_now(session)
            job = session.scalars(sa.select(model).where(self._held_by(job_id, worker_id))).first()
            if job is None:
                session.rollback()
                log.warning("job %s: failure not recorded by %s, its lease was taken over",
                            job_id, worker_id)
                return False
            if retry and job.attempts < job.max_attempts:
                values = {"status": "queued", "error": error, "lease_expires_at": None,
                          "worker_id": None,
                          "run_after": now + dt.timedelta(seconds=self.retry_delay_seconds(job.attempts))}
            else:
                values = {"status": "failed", "error": error, "lease_expires_at": None,
                          "finished_at": now}
            # attempts in the WHERE clause: a takeover between our read and this write
            # (possible on SQLite, which has no row locks) makes this a no-op
            updated = session.execute(
                sa.update(model).where(self._held_by(job_id, worker_id), model.attempts == job.attempts)
                .values(**values).execution_options(synchronize_session=False)).rowcount
            session.commit()
            return updated == 1

    def postpone(self, session_factory: sessionmaker[Session], job_id: int, worker_id: str, *,
                 delay_s: float, progress: float | None) -> bool:
        """Queue a job we hold again after ``delay_s``, giving back the attempt it used."""
        with session_factory() as session:
            now = database_now(session)
            values: dict[str, Any] = {"status": "queued", "attempts": self.model.attempts - 1,
                                      "lease_expires_at": None, "worker_id": None,
                                      "run_after": now + dt.timedelta(seconds=delay_s), "heartbeat_at": now}
            if progress is not None:
                values["progress"] = float(progress)
            updated = self._update_held(session, job_id, worker_id, values)
            session.commit()
            return updated == 1

    def retry_delay_seconds(self, attempts: int) -> float:
        return min(self.retry_backoff_max_seconds,
                   self.retry_backoff_base_seconds * 2 ** max(0, attempts - 1))

    def _held_by(self, job_id: int, worker_id: str):
        model = self.model
        return sa.and_(model.id == job_id, model.status == "running", model.worker_id == worker_id)

    def _update_held(self, session: Session, job_id: int, worker_id: str, values: dict) -> int:
        """UPDATE the job if ``worker_id`` still holds it; the number of rows changed."""
        return session.execute(
            sa.update(self.model).where(self._held_by(job_id, worker_id)).values(**values)
            .execution_options(synchronize_session=False)).rowcount
