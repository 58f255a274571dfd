"""A durable job queue stored in the application's own database: a library that knows
nothing of the service (the application hands it its job model and session factory).

Why the database and not a broker: a job row is committed in the same transaction as
the work it is about (an enrollment, say), so accepted work can never be lost between
the database and a queue. Workers lease jobs; a worker that dies stops renewing its lease
and the job is claimed again by another worker once the lease expires.

* ``JobQueue`` (queue.py): enqueue, read and change jobs of one ORM model.
* ``claim_next`` (claiming.py): how exactly one of many workers gets a job.
* ``Worker`` (worker.py): the loop that claims, runs a handler, keeps the lease alive
  and records the outcome (success, retry with backoff, final failure).
"""
from jobqueue.claiming import ClaimedJob, LostHandler
from jobqueue.errors import NotReady, PermanentJobError
from jobqueue.queue import JobQueue
from jobqueue.worker import Handler, JobContext, Worker

__all__ = ["ClaimedJob", "Handler", "JobContext", "JobQueue", "LostHandler", "NotReady",
           "PermanentJobError", "Worker"]
