"""Registry work too heavy for a request, run by the job workers: path evaluations."""
from __future__ import annotations

import pathlib

from jobqueue import PermanentJobError

from app.store.job_queue import jobs
from app.errors import ApiError
from app.services import registry
from app.services.path_eval import evaluate_alignment

EVALUATE_JOB = "evaluate-path"


def default_eval_dir(settings) -> pathlib.Path:
    return settings.shared_data_dir / "librispeech" / "test-other"


def submit_evaluation(services, alignment: str, *, eval_dir: str | None, options: dict, tolerance: dict,
                      actor: str, created_by_key_id: int | None = None):
    folder = pathlib.Path(eval_dir) if eval_dir else default_eval_dir(services.settings)
    with services.session() as session:
        registry.get_artifact_row(session, alignment)  # 404 now rather than in the worker
        job = jobs.enqueue(session, EVALUATE_JOB, {"alignment": alignment, "eval_dir": str(folder),
                                                   "options": options, "tolerance": tolerance, "actor": actor},
                           max_attempts=services.settings.job_max_attempts, created_by_key_id=created_by_key_id)
        session.commit()
        session.refresh(job)
        return job


def process_evaluation(services, ctx) -> dict:
    payload = ctx.payload
    folder = pathlib.Path(payload["eval_dir"])
    if not folder.is_dir():
        raise PermanentJobError(f"no evaluation folder at {folder}")
    ctx.set_progress(0.05)
    options = dict(payload.get("options", {}))
    if "crops" in options:  # whole utterances are always a condition
        options["crops"] = (None, *options["crops"])
    try:
        return evaluate_alignment(services, payload["alignment"], folder=folder, actor=payload["actor"],
                                  tolerance=payload.get("tolerance") or None, **options)
    except ApiError as exc:  # bad input: retrying cannot help
        raise PermanentJobError(exc.message) from exc
