"""Run the evaluation harness (nessa/lab/evaluation/) with the configured models.

The same flags as `nessa eval` (app.cli.lab_eval.add_eval_arguments), plus the model
versions and an optional scoring micro-benchmark. Example (the table in docs/evaluation.md):

    .venv/bin/python scripts/run_evaluation.py --json var/eval/default.json --det var/eval/default-det.png
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app.cli.lab_eval import add_eval_arguments, run_eval  # noqa: E402
from app.model_catalog import load_embedder  # noqa: E402
from app.settings import Settings  # noqa: E402
from nessa.artifact import AlignmentArtifact  # noqa: E402
from nessa.lab.evaluation.harness import discover_artifacts  # noqa: E402
from nessa.lab.scoring_benchmark import benchmark_scoring  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_arguments(parser, Settings.from_env())
    parser.add_argument("--enroll-model", default="campplus-192")
    parser.add_argument("--runtime-model", default="ge2e-256")
    parser.add_argument("--benchmark", action="store_true",
                        help="also time scoring one test embedding against 10 candidates, per artifact")
    args = parser.parse_args(argv)
    started = time.monotonic()
    enroll, runtime = load_embedder(args.enroll_model), load_embedder(args.runtime_model)
    result = run_eval(args, enroll, runtime)
    if args.benchmark:
        for path in args.artifact or discover_artifacts():
            print(json.dumps(benchmark_scoring(AlignmentArtifact.load(path))))
    print(f"total {time.monotonic() - started:.0f} s; info: {json.dumps(result.info)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
