"""Claiming the next runnable job: exactly one of any number of racing workers gets it.

* PostgreSQL (many hosts): ``SELECT ... FOR UPDATE SKIP LOCKED`` - concurrent workers
  skip rows another transaction is claiming instead of waiting on them.
* SQLite (one host): a compare-and-swap ``UPDATE ... WHERE id = ? AND status = ? AND
  attempts = ? AND <still runnable>``; SQLite runs one writer at a time, so exactly one
  of several racing workers sees rowcount 1, the others look for another job.

A running job whose lease expired is taken over (its worker is gone; that attempt counts
as a failed one), or given up when it has no attempts left.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from jobqueue.clock import database_now

log = logging.getLogger(__name__)

# On SQLite a lost compare-and-swap means another worker claimed that job; look again
# a bounded number of times, then let the caller poll.
_SQLITE_CLAIM_TRIES = 20

#: called as on_lost(session, kind, payload) inside the transaction that gives up a job
#: whose workers kept dying, so the job's subject (e.g. its enrollment) fails atomically
LostHandler = Callable[[Session, str, dict], None]


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


def claim_next(model, session_factory: sessionmaker[Session], worker_id: str, *,
               lease_seconds: float, kinds: Iterable[str] | None = None,
               on_lost: LostHandler | None = None) -> ClaimedJob | None:
    """Claim the oldest runnable job of ``model`` (by run_after, then id) for ``worker_id``.

    A running job whose lease expired is taken over (its previous attempt counts as a
    failed one); if it has no attempts left it is marked failed instead (``on_lost`` runs
    in that same transaction) and the search goes on. Returns None when nothing is runnable.
    """
    kinds = None if kinds is None else list(kinds)
    if kinds == []:
        return None
    with session_factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            return _claim_skip_locked(model, session, worker_id, lease_seconds, kinds, on_lost)
        return _claim_compare_and_swap(model, session, worker_id, lease_seconds, kinds, on_lost)


def runnable(model, now: dt.datetime, kinds: Iterable[str] | None):
    """Queued and due, or running with an expired lease (its worker is gone)."""
    condition = sa.or_(
        sa.and_(model.status == "queued", model.run_after <= now),
        sa.and_(model.status == "running", model.lease_expires_at < now),
    )
    if kinds is not None:
        condition = sa.and_(condition, model.kind.in_(list(kinds)))
    return condition


def _claim_skip_locked(model, session: Session, worker_id: str, lease_seconds: float,
                       kinds: list[str] | None, on_lost: LostHandler | None = None) -> ClaimedJob | None:
    while True:
        now = database_now(session)
        job = session.scalars(
            sa.select(model).where(runnable(model, now, kinds))
            .order_by(model.run_after, model.id).limit(1)
            .with_for_update(skip_locked=True)).first()
        if job is None:
            session.rollback()
            return None
        if _lost_too_often(job):
            _assign(job, _lost_values(job, now))
            if on_lost is not None:
                on_lost(session, job.kind, dict(job.payload or {}))
            session.commit()
            _log_lost(job)
            continue
        if job.status == "running":
            _log_reclaim(job, worker_id)
        _assign(job, _take_values(job, worker_id, now, lease_seconds))
        session.commit()
        return _snapshot(job)


def _claim_compare_and_swap(model, session: Session, worker_id: str, lease_seconds: float,
                            kinds: list[str] | None, on_lost: LostHandler | None = None) -> ClaimedJob | None:
    for _ in range(_SQLITE_CLAIM_TRIES):
        now = database_now(session)
        job = session.scalars(
            sa.select(model).where(runnable(model, now, kinds))
            .order_by(model.run_after, model.id).limit(1)).first()
        if job is None:
            session.rollback()
            return None
        # read-only from here: the row is changed by the UPDATE below, not through the ORM
        session.expunge(job)
        give_up = _lost_too_often(job)
        values = _lost_values(job, now) if give_up else _take_values(job, worker_id, now, lease_seconds)
        # The row as we saw it: the UPDATE only succeeds if nobody changed it since.
        unchanged = sa.and_(model.id == job.id, model.status == job.status,
                            model.attempts == job.attempts, runnable(model, now, kinds))
        updated = session.execute(
            sa.update(model).where(unchanged).values(**values)
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


def _lost_too_often(job) -> bool:
    """A running job found with an expired lease: its attempt counts as failed; give
    up when no attempts are left."""
    return job.status == "running" and job.attempts >= job.max_attempts


def _take_values(job, worker_id: str, now: dt.datetime, lease_seconds: float) -> dict:
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


def _lost_values(job, now: dt.datetime) -> dict:
    return {"status": "failed", "error": f"worker lost {job.attempts} times", "finished_at": now,
            "lease_expires_at": None}


def _assign(job, values: dict) -> None:
    for key, value in values.items():
        setattr(job, key, value)


def _log_lost(job) -> None:
    log.error("job %s (%s) failed: worker lost %s times (max_attempts=%s)",
              job.id, job.kind, job.attempts, job.max_attempts)


def _log_reclaim(job, worker_id: str) -> None:
    log.warning("job %s (%s): lease of worker %s expired during attempt %s; %s takes over",
                job.id, job.kind, job.worker_id, job.attempts, worker_id)


def _snapshot(job) -> ClaimedJob:
    return ClaimedJob(id=job.id, kind=job.kind, payload=dict(job.payload or {}),
                      attempt=job.attempts, max_attempts=job.max_attempts,
                      worker_id=job.worker_id, lease_expires_at=job.lease_expires_at)
