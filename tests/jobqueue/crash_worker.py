"""A worker process for the crash test in tests/jobqueue/test_job_queue.py.

    python -m tests.jobqueue.crash_worker DATABASE_URL MARKER_DIR LEASE_SECONDS WORK_SECONDS DEADLINE_SECONDS

Runs jobs of kind ``crash-test`` from the tests' task table until it has finished one
(exit 0) or the deadline passes (exit 1). The handler writes ``started.<attempt>`` into
MARKER_DIR, works (sleeps) for WORK_SECONDS, then writes ``finished.<attempt>``; the test
SIGKILLs the first worker in between.
"""
from __future__ import annotations

import logging
import pathlib
import sys
import time

from jobqueue import JobContext, JobQueue, Worker

from tests.jobqueue.job_table import TaskRow, open_task_table

KIND = "crash-test"


def main(argv: list[str]) -> int:
    url, marker_dir, lease_seconds, work_seconds, deadline_seconds = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    markers = pathlib.Path(marker_dir)

    def handler(ctx: JobContext) -> dict:
        (markers / f"started.{ctx.attempt}").write_text(str(ctx.job_id))
        time.sleep(float(work_seconds))
        (markers / f"finished.{ctx.attempt}").write_text(str(ctx.job_id))
        return {"attempt": ctx.attempt}

    engine, session_factory = open_task_table(url)
    worker = Worker(JobQueue(TaskRow), session_factory, {KIND: handler},
                    lease_seconds=float(lease_seconds), poll_seconds=0.05)
    deadline = time.monotonic() + float(deadline_seconds)
    try:
        while time.monotonic() < deadline:
            if worker.run_once():
                return 0
            time.sleep(worker.poll_seconds)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
