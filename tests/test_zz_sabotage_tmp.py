# scratch: break the claim guards and expect tests/test_jobs.py's concurrency test to fail
import sqlalchemy as sa, time
from app import jobs
from app.models import Job
import tests.test_jobs as tj
from tests.test_jobs import session_factory  # noqa

def naive_claim(session_factory, worker_id, *, lease_seconds, kinds=None):
    with session_factory() as s:
        now = jobs._now(s)
        job = s.scalars(sa.select(Job).where(jobs._runnable(now, None)).order_by(Job.run_after, Job.id).limit(1)).first()
        if job is None:
            return None
        s.rollback()
        time.sleep(0.001)
        s.execute(sa.update(Job).where(Job.id == job.id).values(status="running", attempts=Job.attempts + 1, worker_id=worker_id, lease_expires_at=now))
        s.commit()
        return jobs.ClaimedJob(job.id, job.kind, {}, 1, 3, worker_id, now)

def test_sabotaged(session_factory, monkeypatch):
    monkeypatch.setattr(jobs, "claim_next", naive_claim)
    tj.test_concurrent_workers_never_claim_the_same_job(session_factory)
