"""A durable job queue stored in the application database.

Why the database and not a broker: a job row is committed in the same transaction as
the enrollment it processes, so an accepted enrollment can never be lost between the
database and a queue. Workers lease jobs; a worker that dies stops renewing its lease
and the job is claimed again by another worker once the lease expires.

Claiming is safe with any number of workers:

* PostgreSQL (many hosts): ``SELECT ... FOR UPDATE SKIP LOCKED`` - concurrent workers
  skip rows another transaction is claiming instead of waiting on them.
* SQLite (one host): a compare-and-swap ``UPDATE ... WHERE id = ? AND status = ? AND
  attempts = ? AND <still runnable>``; SQLite runs one writer at a time, so exactly one
  of several racing workers sees rowcount 1, the others look for another job.

complete/fail/heartbeat only touch a job still ``running`` under the caller's
worker_id, so a worker whose lease was taken over cannot overwrite the new owner.

Time: on PostgreSQL lease times come from the database clock, so hosts with skewed
clocks still agree on when a lease has expired; SQLite is single-host and uses the local
clock.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from app.store.models import Job, utcnow

log = logging.getLogger(__name__)

#: a retried job waits base * 2**(attempt-1) seconds, at most RETRY_BACKOFF_MAX_SECONDS
RETRY_BACKOFF_BASE_SECONDS = 1.0
RETRY_BACKOFF_MAX_SECONDS = 60.0
# On SQLite a lost compare-and-swap means another worker claimed that job; look again
# a bounded number of times, then let the caller poll.
_SQLITE_CLAIM_TRIES = 20


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help (bad input, missing file): the job
    fails at once with this message."""


class NotReady(Exception):
    """Raised by a handler that waits on other jobs (a parent on its children): the job
    is queued again after ``delay_s`` without spending an attempt, keeping its progress."""

    def __init__(self, delay_s: float = 1.0, progress: float | None = None):
        super().__init__(f"not ready; again in {delay_s} s")
        self.delay_s = float(delay_s)
        self.progress = progress


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job it now holds (a snapshot; the session is gone)."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    worker_id: str
    lease_expires_at: dt.datetime


def enqueue(session: Session, kind: str, payload: dict, *, max_attempts: int = 3,
            parent_id: int | None = None, created_by_key_id: int | None = None) -> Job:
    """Add a job to ``session``; it becomes visible to workers when the caller commits.
    ``created_by_key_id``: the API key that asked for it (None: the CLI or a worker), the
    only non-admin key that may read it."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    job = Job(kind=kind, payload=dict(payload), status="queued", attempts=0,
              max_attempts=max_attempts, run_after=_now(session), parent_id=parent_id,
              created_by_key_id=created_by_key_id)
    session.add(job)
    return job


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def retry_delay_seconds(attempts: int) -> float:
    return min(RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))


def _now(session: Session) -> dt.datetime:
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(sa.select(sa.func.now())).astimezone(dt.timezone.utc)
    return utcnow()


def _runnable(now: dt.datetime, kinds: Iterable[str] | None):
    """Queued and due, or running with an expired lease (its worker is gone)."""
    condition = sa.or_(
        sa.and_(Job.status == "queued", Job.run_after <= now),
        sa.and_(Job.status == "running", Job.lease_expires_at < now),
    )
    if kinds is not None:
        condition = sa.and_(condition, Job.kind.in_(list(kinds)))
    return condition


def _lost_too_often(job: Job) -> bool:
    """A running job found with an expired lease: its attempt counts as failed; give
    up when no attempts are left."""
    return job.status == "running" and job.attempts >= job.max_attempts


def _worker_lost_message(job: Job) -> str:
    return f"worker lost {job.attempts} times"


#: called as on_lost(session, kind, payload) inside the transaction that gives up a job
#: whose workers kept dying, so the job's subject (e.g. its enrollment) fails atomically
LostHandler = Callable[[Session, str, dict], None]


def claim_next(session_factory: sessionmaker[Session], worker_id: str, *,
               lease_seconds: float, kinds: Iterable[str] | None = None,
               on_lost: LostHandler | None = None) -> ClaimedJob | None:
    """Claim the oldest runnable job (by run_after, then id) for ``worker_id``.

    A running job whose lease expired is taken over (its previous attempt counts as a
    failed one); if it has no attempts left it is marked failed instead (``on_lost`` runs
    in that same transaction) and the search goes on. Returns None when nothing is runnable.
    """
    kinds = None if kinds is None else list(kinds)
    if kinds == []:
        return None
    with session_factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            return _claim_skip_locked(session, worker_id, lease_seconds, kinds, on_lost)
        return _claim_compare_and_swap(session, worker_id, lease_seconds, kinds, on_lost)


def _claim_skip_locked(session: Session, worker_id: str, lease_seconds: float,
                       kinds: list[str] | None, on_lost: LostHandler | None = None) -> ClaimedJob | None:
    while True:
        now = _now(session)
        job = session.scalars(
            sa.select(Job).where(_runnable(now, kinds))
            .order_by(Job.run_after, Job.id).limit(1)
            .with_for_update(skip_locked=True)).first()
        if job is None:
            session.rollback()
            return None
        if _lost_too_often(job):
            _mark_lost(job, now)
            if on_lost is not None:
                on_lost(session, job.kind, dict(job.payload or {}))
            session.commit()
            _log_lost(job)
            continue
        if job.status == "running":
            _log_reclaim(job, worker_id)
        _take(job, worker_id, now, lease_seconds)
        session.commit()
        return _snapshot(job)


def _claim_compare_and_swap(session: Session, worker_id: str, lease_seconds: float,
                            kinds: list[str] | None, on_lost: LostHandler | None = None) -> ClaimedJob | None:
    for _ in range(_SQLITE_CLAIM_TRIES):
        now = _now(session)
        job = session.scalars(
            sa.select(Job).where(_runnable(now, kinds))
            .order_by(Job.run_after, Job.id).limit(1)).first()
        if job is None:
            session.rollback()
            return None
        # read-only from here: the row is changed by the UPDATE below, not through the ORM
        session.expunge(job)
        give_up = _lost_too_often(job)
        values = _lost_values(job, now) if give_up else _take_values(job, worker_id, now, lease_seconds)
        # The row as we saw it: the UPDATE only succeeds if nobody changed it since.
        unchanged = sa.and_(Job.id == job.id, Job.status == job.status,
                            Job.attempts == job.attempts, _runnable(now, kinds))
        updated = session.execute(
            sa.update(Job).where(unchanged).values(**values)
            .execution_options(synchronize_session=False)).rowcount
        if updated == 1 and give_up and on_lost is not None:
            on_lost(session, job.kind, dict(job.payload or {}))
        session.commit()
        if updated != 1:
            continue  # another worker changed it first
        if give_up:
            _log_lost(job)
            continue
        if job.status == "running":
            _log_reclaim(job, worker_id)
        return dataclasses.replace(_snapshot(job), attempt=values["attempts"], worker_id=worker_id,
                                   lease_expires_at=values["lease_expires_at"])
    return None


def _take_values(job: Job, worker_id: str, now: dt.datetime, lease_seconds: float) -> dict:
    values = {
        "status": "running",
        "attempts": job.attempts + 1,
        "worker_id": worker_id,
        "lease_expires_at": now + dt.timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
        "started_at": now,
        "progress": None,
    }
    if job.status == "running":
        # a trace of the takeover while the job runs; fail() replaces it, complete() clears it
        values["error"] = f"worker {job.worker_id} lost during attempt {job.attempts}"
    return values


def _take(job: Job, worker_id: str, now: dt.datetime, lease_seconds: float) -> None:
    for key, value in _take_values(job, worker_id, now, lease_seconds).items():
        setattr(job, key, value)


def _lost_values(job: Job, now: dt.datetime) -> dict:
    return {"status": "failed", "error": _worker_lost_message(job), "finished_at": now,
            "lease_expires_at": None}


def _mark_lost(job: Job, now: dt.datetime) -> None:
    for key, value in _lost_values(job, now).items():
        setattr(job, key, value)


def _log_lost(job: Job) -> None:
    log.error("job %s (%s) failed: worker lost %s times (max_attempts=%s)",
              job.id, job.kind, job.attempts, job.max_attempts)


def _log_reclaim(job: Job, worker_id: str) -> None:
    log.warning("job %s (%s): lease of worker %s expired during attempt %s; %s takes over",
                job.id, job.kind, job.worker_id, job.attempts, worker_id)


def _snapshot(job: Job) -> ClaimedJob:
    return ClaimedJob(id=job.id, kind=job.kind, payload=dict(job.payload or {}),
                      attempt=job.attempts, max_attempts=job.max_attempts,
                      worker_id=job.worker_id, lease_expires_at=job.lease_expires_at)


def _held_by(job_id: int, worker_id: str):
    return sa.and_(Job.id == job_id, Job.status == "running", Job.worker_id == worker_id)


def heartbeat(session_factory: sessionmaker[Session], job_id: int, worker_id: str, *,
              lease_seconds: float, progress: float | None = None) -> bool:
    """Extend the lease (and record progress). False if the job is no longer ours."""
    with session_factory() as session:
        now = _now(session)
        values: dict[str, Any] = {"lease_expires_at": now + dt.timedelta(seconds=lease_seconds),
                                  "heartbeat_at": now}
        if progress is not None:
            values["progress"] = float(progress)
        updated = session.execute(
            sa.update(Job).where(_held_by(job_id, worker_id)).values(**values)
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        return updated == 1


def complete(session_factory: sessionmaker[Session], job_id: int, worker_id: str,
             result: dict | None) -> bool:
    """Mark the job succeeded. False (and nothing changed) if it is no longer ours."""
    with session_factory() as session:
        now = _now(session)
        updated = session.execute(
            sa.update(Job).where(_held_by(job_id, worker_id))
            .values(status="succeeded", result=result, error=None, progress=1.0,
                    finished_at=now, lease_expires_at=None, heartbeat_at=now)
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
    if updated != 1:
        log.warning("job %s: not completed by %s, its lease was taken over", job_id, worker_id)
    return updated == 1


def fail(session_factory: sessionmaker[Session], job_id: int, worker_id: str, error: str, *,
         retry: bool) -> bool:
    """Record a failed attempt. With ``retry`` and attempts left, the job is queued again
    after a backoff; otherwise it is failed for good. False if it is no longer ours."""
    with session_factory() as session:
        now = _now(session)
        job = session.scalars(sa.select(Job).where(_held_by(job_id, worker_id))).first()
        if job is None:
            session.rollback()
            log.warning("job %s: failure not recorded by %s, its lease was taken over",
                        job_id, worker_id)
            return False
        if retry and job.attempts < job.max_attempts:
            values = {"status": "queued", "error": error, "lease_expires_at": None,
                      "worker_id": None,
                      "run_after": now + dt.timedelta(seconds=retry_delay_seconds(job.attempts))}
        else:
            values = {"status": "failed", "error": error, "lease_expires_at": None,
                      "finished_at": now}
        # attempts in the WHERE clause: a takeover between our read and this write
        # (possible on SQLite, which has no row locks) makes this a no-op
        updated = session.execute(
            sa.update(Job).where(_held_by(job_id, worker_id), Job.attempts == job.attempts)
            .values(**values).execution_options(synchronize_session=False)).rowcount
        session.commit()
        return updated == 1


def postpone(session_factory: sessionmaker[Session], job_id: int, worker_id: str, *,
             delay_s: float, progress: float | None) -> bool:
    """Queue a job we hold again after ``delay_s``, giving back the attempt it used."""
    with session_factory() as session:
        now = _now(session)
        values: dict[str, Any] = {"status": "queued", "attempts": Job.attempts - 1, "lease_expires_at": None,
                                  "worker_id": None, "run_after": now + dt.timedelta(seconds=delay_s),
                                  "heartbeat_at": now}
        if progress is not None:
            values["progress"] = float(progress)
        updated = session.execute(sa.update(Job).where(_held_by(job_id, worker_id)).values(**values)
                                  .execution_options(synchronize_session=False)).rowcount
        session.commit()
        return updated == 1


def children_summary(session: Session, parent_id: int) -> dict[str, int]:
    """How many children of a job are in each status."""
    rows = session.execute(sa.select(Job.status, sa.func.count()).where(Job.parent_id == parent_id)
                           .group_by(Job.status)).all()
    return {status: count for status, count in rows}


def _unstorable(result) -> str | None:
    """Why a handler's result cannot go into the JSON column, or None if it can."""
    if result is not None and not isinstance(result, dict):
        return f"could not store result: handler returned {type(result).__name__}, not a dict"
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return f"could not store result: {exc}"
    return None


# --- worker -----------------------------------------------------------------------------

class JobContext:
    """What a handler sees of its job."""

    def __init__(self, job: ClaimedJob):
        self.job_id = job.id
        self.kind = job.kind
        self.payload = job.payload
        self.attempt = job.attempt
        self.max_attempts = job.max_attempts
        #: the latest fraction done; the heartbeat thread writes it to the database
        self.progress: float | None = None
        self._lease_lost = threading.Event()

    def set_progress(self, fraction: float) -> None:
        """Record progress in [0, 1]; written to the database with the next heartbeat
        (not at once, so frequent calls cost nothing)."""
        self.progress = min(1.0, max(0.0, float(fraction)))

    @property
    def lease_lost(self) -> bool:
        """True once another worker has taken the job over; a long handler may stop early
        (its outcome will not be recorded)."""
        return self._lease_lost.is_set()


Handler = Callable[[JobContext], "dict | None"]


class Worker:
    """Runs jobs of the kinds it has handlers for, one at a time."""

    def __init__(self, session_factory: sessionmaker[Session], handlers: Mapping[str, Handler], *,
                 worker_id: str | None = None, lease_seconds: float = 30,
                 poll_seconds: float = 0.5, on_lost: LostHandler | None = None):
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.session_factory = session_factory
        self.handlers = dict(handlers)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = float(lease_seconds)
        self.poll_seconds = float(poll_seconds)
        self.on_lost = on_lost

    def run_once(self) -> bool:
        """Claim and run one job. False when there was nothing to run.

        Database errors propagate; a job whose outcome could not be recorded stays
        running until its lease expires and is then claimed again.
        """
        job = claim_next(self.session_factory, self.worker_id, lease_seconds=self.lease_seconds,
                         kinds=self.handlers, on_lost=self.on_lost)
        if job is None:
            return False
        log.info("job %s (%s): attempt %s/%s on %s", job.id, job.kind, job.attempt,
                 job.max_attempts, self.worker_id)
        context = JobContext(job)
        stop_heartbeat = threading.Event()
        beater = threading.Thread(target=self._heartbeat_loop, args=(context, stop_heartbeat),
                                  name=f"job-{job.id}-heartbeat", daemon=True)
        beater.start()
        try:
            try:
                result = self.handlers[job.kind](context)
            finally:
                stop_heartbeat.set()
                beater.join()
        except NotReady as exc:
            postpone(self.session_factory, job.id, self.worker_id, delay_s=exc.delay_s, progress=exc.progress)
            return True
        except PermanentJobError as exc:
            log.error("job %s (%s) failed permanently: %s", job.id, job.kind, exc)
            fail(self.session_factory, job.id, self.worker_id, str(exc) or type(exc).__name__,
                 retry=False)
            return True
        except Exception as exc:
            log.exception("job %s (%s) attempt %s/%s raised", job.id, job.kind, job.attempt,
                          job.max_attempts)
            fail(self.session_factory, job.id, self.worker_id, f"{type(exc).__name__}: {exc}",
                 retry=True)
            return True
        problem = _unstorable(result)
        if problem:
            # a handler bug; running it again would produce the same result
            log.error("job %s (%s): %s", job.id, job.kind, problem)
            fail(self.session_factory, job.id, self.worker_id, problem, retry=False)
        elif complete(self.session_factory, job.id, self.worker_id, result):
            log.info("job %s (%s) succeeded", job.id, job.kind)
        return True

    def _heartbeat_loop(self, context: JobContext, stop: threading.Event) -> None:
        interval = self.lease_seconds / 3
        while not stop.wait(interval):
            try:
                ours = heartbeat(self.session_factory, context.job_id, self.worker_id,
                                 lease_seconds=self.lease_seconds, progress=context.progress)
            except Exception:
                # a database hiccup: the lease has slack for the next beats
                log.exception("job %s: heartbeat failed", context.job_id)
                continue
            if not ours:
                log.warning("job %s: lease lost by %s", context.job_id, self.worker_id)
                context._lease_lost.set()
                return

    def between_jobs(self) -> None:
        """Housekeeping that `run_forever` does before each claim (a subclass's); must not raise."""

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run jobs until ``stop_event`` is set; the current job is finished first."""
        log.info("worker %s started (kinds: %s)", self.worker_id, ", ".join(sorted(self.handlers)))
        while not stop_event.is_set():
            self.between_jobs()
            try:
                ran = self.run_once()
            except Exception:
                # the database is unreachable or similar: wait and try again
                log.exception("worker %s: claiming a job failed", self.worker_id)
                ran = False
            if not ran:
                stop_event.wait(self.poll_seconds)
        log.info("worker %s stopped", self.worker_id)
