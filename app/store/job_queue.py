"""The service's job queue: the jobqueue library over the ``jobs`` table (models.Job,
whose schema the migrations own). Enqueue in the same transaction as the row a job is
about, so accepted work is never lost between the two."""
from __future__ import annotations

from jobqueue import JobQueue

from app.store.models import Job

jobs = JobQueue(Job)
