"""Micro-benchmark of the service's per-query scoring with an artifact."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from nessa.artifact import AlignmentArtifact
from nessa.calibration import LogisticCalibration
from speechcore.embedder import l2_normalise


def time_calls_us(call: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 0) -> np.ndarray:
    """Microseconds of ``call(query)`` for each query, on one thread (torch's pool is set to
    1 meanwhile; numpy's BLAS does not split a (1 x d) product across threads), after
    ``warmup`` untimed calls on the first queries."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for query in queries[:warmup]:
            call(query)
        times = np.empty(len(queries))
        clock = time.perf_counter_ns
        for i, query in enumerate(queries):
            start = clock()
            call(query)
            times[i] = clock() - start
    finally:
        torch.set_num_threads(previous)
    return times / 1000.0


def benchmark_scoring(artifact: AlignmentArtifact, n_candidates: int = 10, repeats: int = 5000,
                      seed: int = 0) -> dict:
    """Time to score ONE runtime embedding against ``n_candidates`` stored profiles:
    alignment transform + cross cosine + fused LLR (profiles' vectors precomputed, as the
    service stores them), one thread (``time_calls_us``). Returns p50/p95/mean in
    microseconds."""
    rng = np.random.default_rng(seed)
    profiles_e = artifact.transform_target(rng.normal(size=(n_candidates, artifact.target_dim)))
    profiles_r = l2_normalise(rng.normal(size=(n_candidates, artifact.source_dim)))
    queries = l2_normalise(rng.normal(size=(repeats, artifact.source_dim))).astype(np.float32)
    if artifact.scoring:  # the artifact's own scoring: profiles prepared once, per-query work timed
        prepared = artifact.scorer.prepare_candidates(rng.normal(size=(n_candidates, artifact.target_dim)),
                                                      profiles_r)

        def score(query):
            artifact.scorer.score_prepared(query[None, :], prepared)
    else:  # the plain fusion of the two raw cosines
        fusion = LogisticCalibration.from_dict(artifact.fusion)

        def score(query):
            q = query[None, :]
            fusion.llr(q @ profiles_r.T, artifact.transform(q) @ profiles_e.T)
    micro = time_calls_us(score, queries, warmup=min(200, repeats))
    return {"artifact": artifact.name, "n_candidates": n_candidates, "repeats": repeats,
            "p50_us": round(float(np.percentile(micro, 50)), 2), "p95_us": round(float(np.percentile(micro, 95)), 2),
            "p99_us": round(float(np.percentile(micro, 99)), 2),
            "mean_us": round(float(micro.mean()), 2)}
