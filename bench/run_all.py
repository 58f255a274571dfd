"""Every benchmark in one run, one report (`make bench`).

    .venv/bin/python -m bench.run_all [--faiss-sizes 10000 100000 1000000] [--load-seconds 15]
"""
from __future__ import annotations

import argparse
import platform
import sys

from bench import faiss_bench, load_bench, runtime_bench, scoring_bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faiss-sizes", type=int, nargs="+", default=list(faiss_bench.DEFAULT_SIZES))
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--load-seconds", type=float, default=15.0, help="length of each load run (0: skip)")
    args = parser.parse_args(argv)
    print(f"# NESSA benchmarks ({platform.processor() or platform.machine()}, python {platform.python_version()})\n")
    print(runtime_bench.format_report(runtime_bench.run(args.queries)))
    print("\n### Scoring one test embedding against 10 candidates (alignment + fusion), one thread\n")
    print(scoring_bench.format_table(scoring_bench.run()))
    print("\n### FAISS search, one thread\n")
    print(faiss_bench.format_table(faiss_bench.run(args.faiss_sizes)))
    if args.load_seconds > 0:
        print()
        print(load_bench.format_report(load_bench.run(args.load_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
