"""The database-backed job queue as a library, on SQLite and PostgreSQL: a table of the
tests' own (job_table.py), nothing from app/."""
from __future__ import annotations

import datetime as dt
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from jobqueue import JobContext, JobQueue, NotReady, PermanentJobError, Worker
from jobqueue.clock import utcnow

from tests.conftest import REPO_ROOT
from tests.jobqueue.job_table import TaskRow, open_task_table

queue = JobQueue(TaskRow)
#: retries without waiting, for tests of the retry path itself
impatient_queue = JobQueue(TaskRow, retry_backoff_base_seconds=0.0)


@pytest.fixture
def sessions(database_url):
    """Sessions on a fresh database (SQLite file or PostgreSQL schema) holding the task table."""
    engine, sessions = open_task_table(database_url)
    yield sessions
    engine.dispose()


def _enqueue(sessions, kind="test", payload=None, **options) -> int:
    with sessions() as session:
        job = queue.enqueue(session, kind, payload or {}, **options)
        session.commit()
        return job.id


def _job(sessions, job_id) -> TaskRow:
    with sessions() as session:
        return queue.get_job(session, job_id)


def _set(sessions, job_id, **values) -> None:
    with sessions() as session:
        session.execute(sa.update(TaskRow).where(TaskRow.id == job_id).values(**values))
        session.commit()


def _expire_lease(sessions, job_id) -> None:
    _set(sessions, job_id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))


def test_enqueue_belongs_to_the_callers_transaction(sessions):
    with sessions() as session:
        queue.enqueue(session, "test", {"n": 1})
        session.rollback()
    assert queue.claim_next(sessions, "w", lease_seconds=30) is None

    job_id = _enqueue(sessions, payload={"n": 2}, max_attempts=5)
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.max_attempts, job.payload) == ("queued", 0, 5, {"n": 2})


def test_claim_and_complete(sessions):
    job_id = _enqueue(sessions, payload={"enrollment_id": 7})
    before = utcnow()
    claimed = queue.claim_next(sessions, "worker-a", lease_seconds=30)
    assert claimed is not None
    assert (claimed.id, claimed.kind, claimed.payload, claimed.attempt, claimed.worker_id) == (
        job_id, "test", {"enrollment_id": 7}, 1, "worker-a")

    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.worker_id) == ("running", 1, "worker-a")
    assert job.started_at >= before - dt.timedelta(seconds=1)
    assert dt.timedelta(seconds=29) < job.lease_expires_at - before < dt.timedelta(seconds=32)
    assert queue.claim_next(sessions, "worker-b", lease_seconds=30) is None

    assert queue.complete(sessions, job_id, "worker-a", {"ok": True})
    job = _job(sessions, job_id)
    assert (job.status, job.result, job.lease_expires_at) == ("succeeded", {"ok": True}, None)
    assert job.finished_at >= job.started_at
    assert not queue.complete(sessions, job_id, "worker-a", {"again": True})
    assert _job(sessions, job_id).result == {"ok": True}


def test_claims_oldest_due_job_of_the_requested_kinds(sessions):
    later = _enqueue(sessions, kind="a")
    _set(sessions, later, run_after=utcnow() + dt.timedelta(hours=1))
    first = _enqueue(sessions, kind="a")
    other_kind = _enqueue(sessions, kind="b")
    second = _enqueue(sessions, kind="a")

    assert queue.claim_next(sessions, "w", lease_seconds=30, kinds=[]) is None
    claimed = [queue.claim_next(sessions, "w", lease_seconds=30, kinds=["a"]) for _ in range(3)]
    assert [c and c.id for c in claimed] == [first, second, None]
    assert queue.claim_next(sessions, "w", lease_seconds=30).id == other_kind


def _claim_concurrently(sessions, n_workers: int) -> list[int]:
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(n_workers)
    errors: list[BaseException] = []

    def work(worker_id: str):
        try:
            start.wait()
            while (job := queue.claim_next(sessions, worker_id, lease_seconds=30)) is not None:
                with lock:
                    claimed.append(job.id)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return claimed


def test_concurrent_workers_never_claim_the_same_job(sessions):
    with sessions() as session:
        ids = [queue.enqueue(session, "test", {"i": i}) for i in range(40)]
        session.commit()
        ids = [job.id for job in ids]

    claimed = _claim_concurrently(sessions, n_workers=6)

    assert sorted(claimed) == sorted(ids)  # each job exactly once
    with sessions() as session:
        rows = session.scalars(sa.select(TaskRow)).all()
        assert {(row.status, row.attempts) for row in rows} == {("running", 1)}
        # every worker's claims are recorded under its own id
        assert len({row.worker_id for row in rows}) > 1


def test_expired_lease_is_taken_over(sessions):
    job_id = _enqueue(sessions)
    first = queue.claim_next(sessions, "worker-a", lease_seconds=30)
    _expire_lease(sessions, job_id)

    second = queue.claim_next(sessions, "worker-b", lease_seconds=30)
    assert (second.id, second.attempt, second.worker_id) == (job_id, 2, "worker-b")
    assert "worker-a lost during attempt 1" in _job(sessions, job_id).error

    # the old owner can no longer touch the job
    assert not queue.heartbeat(sessions, job_id, first.worker_id, lease_seconds=30)
    assert not queue.complete(sessions, job_id, first.worker_id, {"from": "a"})
    assert not queue.fail(sessions, job_id, first.worker_id, "late", retry=False)
    assert queue.complete(sessions, job_id, "worker-b", {"from": "b"})
    job = _job(sessions, job_id)
    assert (job.status, job.result, job.attempts, job.error) == ("succeeded", {"from": "b"}, 2, None)


def test_worker_lost_on_every_attempt_fails_the_job(sessions):
    job_id = _enqueue(sessions, max_attempts=2)
    queue.claim_next(sessions, "worker-a", lease_seconds=30)
    _expire_lease(sessions, job_id)
    queue.claim_next(sessions, "worker-b", lease_seconds=30)
    _expire_lease(sessions, job_id)
    next_job = _enqueue(sessions)

    # the exhausted job is failed and the search goes on to the next one
    claimed = queue.claim_next(sessions, "worker-c", lease_seconds=30)
    assert claimed.id == next_job
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error) == ("failed", 2, "worker lost 2 times")
    assert job.finished_at is not None


def test_heartbeat_extends_lease_and_records_progress(sessions):
    job_id = _enqueue(sessions)
    queue.claim_next(sessions, "w", lease_seconds=5)
    lease_before = _job(sessions, job_id).lease_expires_at

    assert queue.heartbeat(sessions, job_id, "w", lease_seconds=60, progress=0.25)
    job = _job(sessions, job_id)
    assert job.lease_expires_at - lease_before > dt.timedelta(seconds=50)
    assert job.progress == 0.25
    assert not queue.heartbeat(sessions, job_id, "someone-else", lease_seconds=60)


def test_fail_with_retry_backs_off_then_gives_up(sessions):
    job_id = _enqueue(sessions, max_attempts=2)
    queue.claim_next(sessions, "w", lease_seconds=30)

    assert queue.fail(sessions, job_id, "w", "flaky", retry=True)
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error, job.worker_id) == ("queued", 1, "flaky", None)
    assert job.run_after > utcnow()  # backoff: not runnable yet
    assert queue.claim_next(sessions, "w", lease_seconds=30) is None

    _set(sessions, job_id, run_after=utcnow() - dt.timedelta(seconds=1))
    assert queue.claim_next(sessions, "w", lease_seconds=30).attempt == 2
    assert queue.fail(sessions, job_id, "w", "flaky again", retry=True)
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error) == ("failed", 2, "flaky again")
    assert queue.claim_next(sessions, "w", lease_seconds=30) is None


def test_fail_without_retry_is_final(sessions):
    job_id = _enqueue(sessions, max_attempts=3)
    queue.claim_next(sessions, "w", lease_seconds=30)
    assert queue.fail(sessions, job_id, "w", "bad input", retry=False)
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error) == ("failed", 1, "bad input")


# --- Worker ---------------------------------------------------------------------------

def test_worker_runs_a_job(sessions):
    seen = []

    def handler(ctx: JobContext):
        seen.append((ctx.job_id, ctx.kind, ctx.payload, ctx.attempt, ctx.max_attempts))
        return {"doubled": ctx.payload["n"] * 2}

    worker = Worker(queue, sessions, {"double": handler}, worker_id="w1")
    job_id = _enqueue(sessions, kind="double", payload={"n": 21})
    _enqueue(sessions, kind="unhandled")

    assert worker.run_once()
    assert not worker.run_once()  # the other job's kind has no handler here
    assert seen == [(job_id, "double", {"n": 21}, 1, 3)]
    job = _job(sessions, job_id)
    assert (job.status, job.result, job.progress, job.worker_id) == ("succeeded", {"doubled": 42}, 1.0, "w1")


def test_worker_retries_after_an_exception(sessions):
    attempts = []

    def handler(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("model server unavailable")
        return None

    worker = Worker(impatient_queue, sessions, {"test": handler})
    job_id = _enqueue(sessions)
    assert worker.run_once()
    job = _job(sessions, job_id)
    assert (job.status, job.error) == ("queued", "ConnectionError: model server unavailable")
    assert worker.run_once()
    assert attempts == [1, 2]
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.result) == ("succeeded", 2, None)


def test_worker_gives_up_after_max_attempts(sessions):

    def handler(ctx):
        raise RuntimeError(f"boom {ctx.attempt}")

    worker = Worker(impatient_queue, sessions, {"test": handler})
    job_id = _enqueue(sessions, max_attempts=2)
    assert worker.run_once() and worker.run_once()
    assert not worker.run_once()
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error) == ("failed", 2, "RuntimeError: boom 2")


def test_permanent_job_error_fails_at_once(sessions):
    def handler(ctx):
        raise PermanentJobError("stored audio is missing")

    worker = Worker(queue, sessions, {"test": handler})
    job_id = _enqueue(sessions, max_attempts=3)
    assert worker.run_once()
    assert not worker.run_once()
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error) == ("failed", 1, "stored audio is missing")


def test_unstorable_result_fails_the_job(sessions):
    worker = Worker(queue, sessions, {"test": lambda ctx: {"not json": object()}})
    job_id = _enqueue(sessions)
    assert worker.run_once()
    job = _job(sessions, job_id)
    assert job.status == "failed" and job.error.startswith("could not store result")


def test_heartbeats_keep_a_long_job_and_report_progress(sessions):
    observed = {}

    def handler(ctx):
        ctx.set_progress(0.5)
        time.sleep(1.3)  # over two leases long: only heartbeats keep the job ours
        observed["stolen"] = queue.claim_next(sessions, "thief", lease_seconds=30)
        observed["progress"] = _job(sessions, ctx.job_id).progress
        observed["lease_lost"] = ctx.lease_lost
        return {"done": True}

    worker = Worker(queue, sessions, {"test": handler}, lease_seconds=0.6)
    job_id = _enqueue(sessions)
    assert worker.run_once()
    assert observed == {"stolen": None, "progress": 0.5, "lease_lost": False}
    job = _job(sessions, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_handler_learns_its_lease_was_taken_over(sessions):
    observed = {}

    def handler(ctx):
        # what claim_next does after this worker's lease expired: another worker owns it
        _set(sessions, ctx.job_id, worker_id="thief", attempts=2)
        deadline = time.monotonic() + 5
        while not ctx.lease_lost and time.monotonic() < deadline:
            time.sleep(0.02)
        observed["lease_lost"] = ctx.lease_lost
        return {"from": "original"}

    worker = Worker(queue, sessions, {"test": handler}, lease_seconds=0.3)
    job_id = _enqueue(sessions)
    assert worker.run_once()
    assert observed["lease_lost"]
    job = _job(sessions, job_id)
    # the original worker's late result is discarded; the job belongs to the thief
    assert (job.status, job.worker_id, job.result) == ("running", "thief", None)


def test_run_forever_processes_jobs_until_stopped(sessions):
    done = []
    worker = Worker(queue, sessions, {"test": lambda ctx: done.append(ctx.job_id)},
                         poll_seconds=0.05)
    ids = [_enqueue(sessions, payload={"i": i}) for i in range(3)]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(done) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        late_id = _enqueue(sessions)  # picked up while polling
        while len(done) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert done == ids + [late_id]


# --- the crash test ---------------------------------------------------------------------

def _start_crash_worker(database_url, markers: pathlib.Path, log_name: str) -> subprocess.Popen:
    lease_seconds, work_seconds, deadline_seconds = "1", "1.5", "20"
    with open(markers.parent / log_name, "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "tests.jobqueue.crash_worker", database_url, str(markers),
             lease_seconds, work_seconds, deadline_seconds],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def _wait_for(path: pathlib.Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode} before {path.name} appeared")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def test_job_survives_a_killed_worker(sessions, database_url, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    job_id = _enqueue(sessions, kind="crash-test", payload={"enrollment_id": 1})

    first = _start_crash_worker(database_url, markers, "worker1.log")
    try:
        _wait_for(markers / "started.1", first, timeout=20)
        os.kill(first.pid, signal.SIGKILL)  # mid-job: no cleanup, no fail(), lease left running
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    job = _job(sessions, job_id)
    assert (job.status, job.attempts) == ("running", 1)

    second = _start_crash_worker(database_url, markers, "worker2.log")
    try:
        returncode = second.wait(25)
    finally:
        if second.poll() is None:
            second.kill()
    assert returncode == 0, (tmp_path / "worker2.log").read_text()

    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.result) == ("succeeded", 2, {"attempt": 2})
    assert (markers / "finished.2").exists()
    assert not (markers / "finished.1").exists()


def test_a_parent_waits_for_its_children_without_spending_attempts(sessions):
    """NotReady re-queues the job for later with its attempt given back and its progress
    kept: a parent job polls its children this way without holding a worker."""
    calls = []

    def parent(ctx):
        with sessions() as session:
            if not queue.children_summary(session, ctx.job_id):
                for _ in range(2):
                    queue.enqueue(session, "child", {}, parent_id=ctx.job_id)
                session.commit()
            counts = queue.children_summary(session, ctx.job_id)
        calls.append(dict(counts))
        if counts.get("succeeded", 0) < 2:
            raise NotReady(0.0, progress=counts.get("succeeded", 0) / 2)
        return {"children": 2}

    worker = Worker(queue, sessions, {"parent": parent, "child": lambda ctx: {"ok": True}})
    parent_id = _enqueue(sessions, kind="parent", max_attempts=1)
    assert worker.run_once()  # fans out, not ready
    job = _job(sessions, parent_id)
    assert (job.status, job.attempts, job.progress) == ("queued", 0, 0.0)
    for _ in range(10):
        if not worker.run_once():
            break
    job = _job(sessions, parent_id)
    assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"children": 2})
    with sessions() as session:
        assert queue.children_summary(session, parent_id) == {"succeeded": 2}
    assert calls[0] == {"queued": 2} and calls[-1] == {"succeeded": 2}


# --- what the application plugs in ---------------------------------------------------------

def test_enqueue_fills_the_applications_own_columns(sessions):
    job_id = _enqueue(sessions, payload={"n": 1}, owner="alice")
    assert _job(sessions, job_id).owner == "alice"
    with sessions() as session, pytest.raises(TypeError):
        queue.enqueue(session, "test", {}, no_such_column=1)


def test_on_lost_writes_in_the_transaction_that_gives_the_job_up(sessions):
    """What an application uses to fail the job's subject with it, atomically."""
    job_id = _enqueue(sessions, kind="lost", payload={"subject": 7}, max_attempts=1)
    queue.claim_next(sessions, "worker-a", lease_seconds=30)
    _expire_lease(sessions, job_id)
    seen = []

    def on_lost(session, kind, payload):
        seen.append((kind, payload))
        queue.enqueue(session, "cleanup", {"subject": payload["subject"]})

    assert queue.claim_next(sessions, "worker-b", lease_seconds=30, kinds=["lost"], on_lost=on_lost) is None
    assert seen == [("lost", {"subject": 7})]
    assert _job(sessions, job_id).status == "failed"
    cleanup = queue.claim_next(sessions, "worker-b", lease_seconds=30)
    assert (cleanup.kind, cleanup.payload) == ("cleanup", {"subject": 7})


def test_retry_delay_doubles_up_to_its_cap():
    capped = JobQueue(TaskRow, retry_backoff_base_seconds=1.0, retry_backoff_max_seconds=5.0)
    assert [capped.retry_delay_seconds(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_run_until_idle_waits_for_retries_when_asked(sessions):
    retrying = JobQueue(TaskRow, retry_backoff_base_seconds=0.2)
    attempts = []

    def flaky(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return {"attempt": ctx.attempt}

    worker = Worker(retrying, sessions, {"test": flaky})
    job_id = _enqueue(sessions)
    assert worker.run_until_idle() == 1  # the retry is not due yet: stop
    with sessions() as session:
        assert retrying.unfinished_count(session) == 1
    assert worker.run_until_idle(wait=True, timeout_s=10) == 1
    assert attempts == [1, 2]
    assert _job(sessions, job_id).result == {"attempt": 2}
    with sessions() as session:
        assert retrying.unfinished_count(session) == 0
