"""FAISS benchmark: exact ("Flat") against one approximate index, through vectorindex.

    .venv/bin/python -m bench.faiss_bench [--sizes 10000 100000 1000000] [--dim 192]
                                          [--approx "IVF1024,Flat"] [--approx-params "nprobe=32"]

Synthetic speaker profiles: unit vectors around 256 group centres (language, gender,
channel); two speakers of one group have cosine ~0.2, of different groups ~0. A query is
a stored profile plus noise (the same voice heard again, cosine ~0.71 to its profile),
so recall@1 has a right answer. For each size it measures, for Flat and the approximate
index: build time (``rebuild``: validation, training, adding; all cores), single-query
search latency p50/p95 with FAISS on one thread, recall@1 of the approximate index
against Flat, and how often the top hit is the true profile. Latency goes through
VectorIndex.search, so it includes validation, the lock and id translation -- what the
service pays per request.

Default approximate index: "IVF1024,Flat" with VectorIndex's default nprobe
(sqrt(nlist) = 32). Measured on 2 cores at 1M x 192 it trains and adds in 15-25 s with
recall@1 0.997, where "HNSW32,Flat" (efConstruction 40) took 222 s to build (raw FAISS,
shared machine) and reached recall@1 0.49 / 0.77 at efSearch 64 / 256 on this (high
intrinsic dimension) data. Pass --approx "HNSW32,Flat" to measure it again.
IVF1024 needs 39 x 1024 = 39,936 vectors to train, so below that VectorIndex -- and this
table -- serves exact search (shown as "-> Flat (untrained)"). ``run()`` returns the
rows so other scripts can combine them; ``format_table`` renders them.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Callable, Sequence

import faiss
import numpy as np

from vectorindex import VectorIndex

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_DIM = 192
DEFAULT_APPROX = "IVF1024,Flat"
#: speaker groups (think language x gender x channel) the profiles gather around
N_GROUPS = 256
#: profile = group centre + GROUP_SPREAD * random unit direction: two speakers of one
#: group have cosine ~1 / (1 + GROUP_SPREAD**2) = 0.2, of different groups ~0
GROUP_SPREAD = 2.0
_CHUNK = 100_000


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_profiles(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) unit float32 profiles around N_GROUPS centres, built in chunks."""
    centres = _unit_rows(rng, N_GROUPS, dim)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk += np.float32(GROUP_SPREAD) * _unit_rows(rng, stop - start, dim)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start:stop] = chunk
    return out


def make_queries(profiles: np.ndarray, n_queries: int, noise: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of random profiles; returns (queries, index of the true profile)."""
    truth = rng.integers(0, len(profiles), n_queries)
    q = profiles[truth] + np.float32(noise) * _unit_rows(rng, n_queries, profiles.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, truth


def _single_query_latencies_ms(index: VectorIndex, queries: np.ndarray, k: int) -> np.ndarray:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for q in queries[:5]:  # warm caches and lazy allocations
            index.search(q, k)
        times = np.empty(len(queries))
        for i, q in enumerate(queries):
            start = time.perf_counter()
            index.search(q, k)
            times[i] = time.perf_counter() - start
    finally:
        faiss.omp_set_num_threads(previous)
    return times * 1e3


def _measure(factory: str, search_params: str, ids: np.ndarray, profiles: np.ndarray,
             queries: np.ndarray, latency_queries: np.ndarray, k: int, use_gpu: bool) -> tuple[dict, np.ndarray]:
    index = VectorIndex(profiles.shape[1], factory, use_gpu=use_gpu, search_params=search_params)
    start = time.perf_counter()
    index.rebuild(ids, profiles)
    build_s = time.perf_counter() - start
    latencies = _single_query_latencies_ms(index, latency_queries, k)
    _, found = index.search(queries, k)  # batched, all threads: for recall only
    info = index.describe()
    row = {"factory": factory, "search_params": search_params,
           "effective_factory": info["effective_factory"], "device": info["device"],
           "build_s": build_s, "p50_ms": float(np.percentile(latencies, 50)),
           "p95_ms": float(np.percentile(latencies, 95))}
    del index
    gc.collect()
    return row, found[:, 0]


def run(sizes: Sequence[int] = DEFAULT_SIZES, dim: int = DEFAULT_DIM, approx_factory: str = DEFAULT_APPROX, *,
        approx_params: str = "", n_queries: int = 1000, latency_queries: int = 200, k: int = 10,
        noise: float = 1.0, seed: int = 0, use_gpu: bool = True,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    """Benchmark Flat and ``approx_factory`` at each size; one dict per (size, index)."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows: list[dict] = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        say(f"[faiss_bench] n={n:,} dim={dim}: generating profiles")
        profiles = make_profiles(n, dim, rng)
        ids = np.arange(n, dtype=np.int64) * 3 + 1  # database ids are not row numbers
        queries, truth = make_queries(profiles, n_queries, noise, rng)
        timed = queries[:latency_queries]
        flat_top1 = None
        for factory, params in (("Flat", ""), (approx_factory, approx_params)):
            say(f"[faiss_bench] n={n:,}: {factory} build + search")
            row, top1 = _measure(factory, params, ids, profiles, queries, timed, k, use_gpu)
            if flat_top1 is None:
                flat_top1 = top1
            row.update(n=n, dim=dim, k=k,
                       recall_at_1_vs_flat=float(np.mean(top1 == flat_top1)),
                       true_profile_at_1=float(np.mean(top1 == ids[truth])))
            rows.append(row)
        flat_p50 = rows[-2]["p50_ms"]
        rows[-2]["p50_ratio_vs_flat"] = 1.0
        rows[-1]["p50_ratio_vs_flat"] = rows[-1]["p50_ms"] / flat_p50
        say(f"[faiss_bench] n={n:,}: done")
        del profiles
        gc.collect()
    return rows


def format_table(rows: Sequence[dict]) -> str:
    header = ("| profiles | index | device | build s | p50 ms | p95 ms | p50 vs Flat "
              "| recall@1 vs Flat | true profile @1 |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        name = r["factory"] + (f" ({r['search_params']})" if r["search_params"] else "")
        if r["effective_factory"] != r["factory"]:
            name += f" -> {r['effective_factory']} (untrained)"
        lines.append(f"| {r['n']:,} | {name} | {r['device']} | {r['build_s']:.2f} | {r['p50_ms']:.3f} "
                     f"| {r['p95_ms']:.3f} | {r['p50_ratio_vs_flat']:.3f} | {r['recall_at_1_vs_flat']:.3f} "
                     f"| {r['true_profile_at_1']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faiss_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM)
    parser.add_argument("--approx", default=DEFAULT_APPROX,
                        help='approximate FAISS factory, e.g. "HNSW32,Flat" or "IVF4096,Flat"')
    parser.add_argument("--approx-params", default="",
                        help='FAISS ParameterSpace string, e.g. "efSearch=128,efConstruction=40" or "nprobe=16"')
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--latency-queries", type=int, default=200, help="single queries timed per index")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.0,
                        help="query noise norm relative to the unit profile (1.0: same-speaker cosine ~0.71)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gpu", action="store_true", help="search on CPU even with a FAISS GPU build")
    args = parser.parse_args(argv)
    if args.latency_queries > args.queries:
        parser.error("--latency-queries must not exceed --queries")

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = run(args.sizes, args.dim, args.approx, approx_params=args.approx_params, n_queries=args.queries,
               latency_queries=args.latency_queries, k=args.k, noise=args.noise, seed=args.seed,
               use_gpu=not args.no_gpu)
    probe = VectorIndex(args.dim, "Flat", use_gpu=not args.no_gpu).describe()
    devices = sorted({r["device"] for r in rows})
    print(f"FAISS {faiss.__version__}; device used: {', '.join(devices)}"
          + (f" ({probe['gpu_unavailable_reason']})" if probe["gpu_unavailable_reason"] else "")
          + f"; {os.cpu_count()} CPU cores, builds on {faiss.omp_get_max_threads()} threads, "
          f"latency on 1 thread; k={args.k}, {args.latency_queries} timed single queries, "
          f"{args.queries} queries for recall, noise {args.noise}; "
          f"load average {load_before:.1f} at start (other processes skew timings), "
          f"total {time.perf_counter() - started:.0f} s")
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
