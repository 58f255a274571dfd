"""The worker loop: claim a job, run its kind's handler while a heartbeat thread keeps the
lease, record the outcome (success, retry with backoff, final failure), poll again."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Mapping

from sqlalchemy.orm import Session, sessionmaker

from jobqueue.claiming import ClaimedJob, LostHandler
from jobqueue.errors import NotReady, PermanentJobError
from jobqueue.queue import JobQueue

log = logging.getLogger(__name__)


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

    def __init__(self, queue: JobQueue, session_factory: sessionmaker[Session],
                 handlers: Mapping[str, Handler], *,
                 worker_id: str | None = None, lease_seconds: float = 30,
                 poll_seconds: float = 0.5, on_lost: LostHandler | None = None):
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.queue = queue
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
        job = self.queue.claim_next(self.session_factory, self.worker_id, lease_seconds=self.lease_seconds,
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
            self.queue.postpone(self.session_factory, job.id, self.worker_id, delay_s=exc.delay_s,
                                progress=exc.progress)
            return True
        except PermanentJobError as exc:
            log.error("job %s (%s) failed permanently: %s", job.id, job.kind, exc)
            self.queue.fail(self.session_factory, job.id, self.worker_id, str(exc) or type(exc).__name__,
                            retry=False)
            return True
        except Exception as exc:
            log.exception("job %s (%s) attempt %s/%s raised", job.id, job.kind, job.attempt,
                          job.max_attempts)
            self.queue.fail(self.session_factory, job.id, self.worker_id, f"{type(exc).__name__}: {exc}",
                            retry=True)
            return True
        self._record_result(job, result)
        return True

    def _record_result(self, job: ClaimedJob, result) -> None:
        problem = _unstorable(result)
        if problem:
            # a handler bug; running it again would produce the same result
            log.error("job %s (%s): %s", job.id, job.kind, problem)
            self.queue.fail(self.session_factory, job.id, self.worker_id, problem, retry=False)
        elif self.queue.complete(self.session_factory, job.id, self.worker_id, result):
            log.info("job %s (%s) succeeded", job.id, job.kind)

    def _heartbeat_loop(self, context: JobContext, stop: threading.Event) -> None:
        interval = self.lease_seconds / 3
        while not stop.wait(interval):
            try:
                ours = self.queue.heartbeat(self.session_factory, context.job_id, self.worker_id,
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

    def run_until_idle(self, *, wait: bool = False, timeout_s: float = 600, max_jobs: int = 100_000) -> int:
        """Run jobs in this thread until none is runnable (tests, benchmarks, one-shot
        tools); how many ran. With ``wait``, also wait for jobs queued for later (a parent
        waiting on its children, a retry after backoff) until no job is queued or running."""
        done, deadline = 0, time.monotonic() + timeout_s
        while done < max_jobs:
            if self.run_once():
                done += 1
                continue
            if not wait:
                break
            with self.session_factory() as session:
                pending = self.queue.unfinished_count(session)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pending} jobs still pending after {timeout_s} s")
            time.sleep(0.05)
        return done


def _unstorable(result) -> str | None:
    """Why a handler's result cannot go into the JSON column, or None if it can."""
    if result is not None and not isinstance(result, dict):
        return f"could not store result: handler returned {type(result).__name__}, not a dict"
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return f"could not store result: {exc}"
    return None
