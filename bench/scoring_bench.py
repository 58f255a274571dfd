"""Scoring one test embedding against its candidates (alignment + fusion), one thread.

    .venv/bin/python -m bench.scoring_bench [--candidates 10]

For every bundled alignment artifact, next to a baseline measured in the same run: the
light model's own cosine against the same candidates (what the runtime path costs without
any alignment). Target: alignment + fusion <= 0.1 ms.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from nessa.artifact import AlignmentArtifact
from nessa.lab.scoring_benchmark import benchmark_scoring, time_calls_us

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "nessa" / "artifacts"


def _baseline_us(dim: int, n_candidates: int, repeats: int = 5000) -> float:
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(n_candidates, dim)).astype(np.float32)
    queries = rng.normal(size=(repeats, dim)).astype(np.float32)
    return float(np.percentile(time_calls_us(lambda q: q[None, :] @ profiles.T, queries), 50))


def _service_step_us(artifact: AlignmentArtifact, n_candidates: int, repeats: int = 3000) -> float:
    """p50 of the service's whole scoring step (recognition._score, on profiles in memory):
    the per-profile cache lookups, merging the candidates' rows, then score_prepared."""
    from app.services.recognition import PreparedProfiles

    rng = np.random.default_rng(1)
    profiles = [(i, rng.normal(size=artifact.target_dim).astype(np.float32),
                 rng.normal(size=artifact.source_dim).astype(np.float32)) for i in range(n_candidates)]
    cache = PreparedProfiles()
    queries = rng.normal(size=(repeats, artifact.source_dim)).astype(np.float32)
    micro = time_calls_us(lambda q: artifact.scorer.score_prepared(q, cache.get(artifact, profiles)), queries,
                          warmup=1)  # the first call fills the cache
    return float(np.percentile(micro, 50))


def run(n_candidates: int = 10) -> list[dict]:
    rows = []
    for directory in sorted(p.parent for p in ARTIFACTS.glob("*/artifact.json")):
        artifact = AlignmentArtifact.load(directory)
        result = benchmark_scoring(artifact, n_candidates=n_candidates)
        result["baseline_p50_us"] = round(_baseline_us(artifact.source_dim, n_candidates), 2)
        result["service_step_p50_us"] = round(_service_step_us(artifact, n_candidates), 2)
        rows.append(result)
    return rows


def format_table(rows) -> str:
    lines = ["| artifact | candidates | p50 µs | p95 µs | baseline (light cosine only) p50 µs | ratio | p95 ≤ 100 µs "
             "| service step p50 µs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['n_candidates']} | {r['p50_us']:.1f} | {r['p95_us']:.1f} | "
                     f"{r['baseline_p50_us']:.1f} | {r['p50_us'] / r['baseline_p50_us']:.1f} | "
                     f"{'yes' if r['p95_us'] <= 100 else 'NO'} | {r['service_step_p50_us']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10)
    args = parser.parse_args(argv)
    print(format_table(run(args.candidates)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
