"""`nessa align learning-curve`: EER against the number of real training speakers, with a trend."""
from __future__ import annotations

import json
import pathlib

from app.settings import Settings


def add_parser(asub, settings: Settings) -> None:
    from nessa.lab.learning_curve import DEFAULT_COUNTS, METHODS

    curve = asub.add_parser("learning-curve", help="EER against the number of real training speakers, with a trend")
    curve.add_argument("--train-dir", action="append", default=None,
                       help="training corpus; the curve subsamples the speakers of the first, the others are "
                            "added for one extra 'all corpora' point (repeatable; default: train-clean-100)")
    curve.add_argument("--counts", default=",".join(str(c) for c in DEFAULT_COUNTS),
                       help="comma-separated speaker counts (default: %(default)s)")
    curve.add_argument("--method", choices=METHODS, default="ridge",
                       help="twotower = the shipped two-tower recipe (minutes per count on CPU)")
    curve.add_argument("--repeats", type=int, default=3, help="seeded subsets per count (default: %(default)s)")
    curve.add_argument("--eval-dir", default=str(settings.shared_data_dir / "librispeech" / "test-other"))
    curve.add_argument("--seed", type=int, default=0)
    curve.add_argument("--cache-dir", default=str(settings.cache_dir / "embeddings"))
    curve.add_argument("--json", help="write the curve here")
    curve.add_argument("--png", help="plot points and fitted trends here")
    curve.add_argument("--quiet", action="store_true")


def run(args, settings: Settings) -> int:
    from app.model_catalog import load_embedder
    from nessa.lab.learning_curve import learning_curve_from_audio, plot, summary_table

    train_dirs = args.train_dir or [str(settings.shared_data_dir / "librispeech" / "train-clean-100")]
    curve = learning_curve_from_audio(
        load_embedder(settings.runtime_model), load_embedder(settings.enroll_model), train_dirs, args.eval_dir,
        cache_dir=args.cache_dir, counts=[int(c) for c in str(args.counts).split(",") if c.strip()],
        method=args.method, repeats=args.repeats, seed=args.seed, progress=not args.quiet)
    print(summary_table(curve))
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(curve, indent=1, default=float) + "\n", encoding="utf-8")
    if args.png:
        plot(curve, args.png)
    return 0
