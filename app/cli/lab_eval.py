"""`nessa eval`: every system on one test corpus, one run, one table per protocol."""
from __future__ import annotations

import argparse
import pathlib
import time

from app.cli.common import fail, write_text_file
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    evaluation = sub.add_parser("eval", help="every system on one test corpus, one run, one table")
    add_eval_arguments(evaluation, settings)
    evaluation.set_defaults(func=cmd_eval)


def add_eval_arguments(parser: argparse.ArgumentParser, settings: Settings) -> argparse.ArgumentParser:
    """The `nessa eval` flags (also scripts/run_evaluation.py's)."""
    from nessa.lab.evaluation.protocols import DEFAULT_DRAWS, DEFAULT_ENROLL_UTTERANCES
    from nessa.lab.evaluation.systems import PROTOCOLS

    shared = settings.shared_data_dir
    parser.add_argument("--eval-dir", default=str(shared / "librispeech" / "test-other"),
                        help="<speaker>/<utterance>.{wav,flac} folder (default: %(default)s)")
    parser.add_argument("--anchors-dir", default=str(shared / "librispeech" / "train-clean-100"),
                        help="anchor speakers and alignment-fitting corpus (default: %(default)s)")
    parser.add_argument("--artifact", action="append", default=None,
                        help="alignment artifact directory (repeatable; default: every one under nessa/artifacts)")
    parser.add_argument("--crop", action="append", type=float, default=None,
                        help="test-side crop length in seconds (repeatable; default: 2 and 1)")
    parser.add_argument("--no-crops", action="store_true", help="full length only")
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="profile draws (default: %(default)s)")
    parser.add_argument("--enroll-utterances", type=int, default=DEFAULT_ENROLL_UTTERANCES,
                        help="utterances per profile (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-snr", type=float, default=None, help="add noise to the test side at this SNR (dB)")
    parser.add_argument("--noise-type", choices=("babble", "white"), default="babble")
    parser.add_argument("--cache-dir", default=str(settings.cache_dir / "embeddings"))
    parser.add_argument("--json", help="write the result rows here")
    parser.add_argument("--markdown", help="write the markdown tables here (they are always printed)")
    parser.add_argument("--det", help="write DET curves (PNG) here")
    parser.add_argument("--det-protocol", choices=PROTOCOLS, default="all_pairs")
    parser.add_argument("--adapt", action="store_true",
                        help="also evaluate each artifact adapted on every profile draw's enrollment utterances "
                             "(<artifact>+adapted[+fused], profile protocol only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def cmd_eval(args, settings: Settings) -> int:
    from app.model_catalog import load_embedder

    for folder in (args.eval_dir, args.anchors_dir):
        if not pathlib.Path(folder).is_dir():
            return fail(f"evaluation data not found: {folder}")
    try:
        run_eval(args, load_embedder(settings.enroll_model), load_embedder(settings.runtime_model))
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    return 0


def run_eval(args: argparse.Namespace, enroll_embedder, runtime_embedder):
    """Evaluate as the ``add_eval_arguments`` flags say; prints the tables, writes the outputs
    asked for; returns the ``EvaluationResult``."""
    from nessa.lab.evaluation.conditions import DEFAULT_CROPS, NoiseSpec
    from nessa.lab.evaluation.harness import EvaluationConfig, evaluate

    started = time.monotonic()
    config = EvaluationConfig(
        eval_dir=args.eval_dir, anchors_dir=args.anchors_dir, cache_dir=args.cache_dir, artifacts=args.artifact,
        crops=() if args.no_crops else tuple(args.crop) if args.crop else DEFAULT_CROPS, draws=args.draws,
        n_enroll=args.enroll_utterances, seed=args.seed,
        noise=None if args.noise_snr is None else NoiseSpec(args.noise_type, float(args.noise_snr)),
        adapt=args.adapt, progress=not args.quiet)
    result = evaluate(config, enroll_embedder, runtime_embedder)
    table = result.markdown()
    print(table)
    print(f"({result.info['n_speakers']} speakers, {result.info['n_utterances']} utterances, "
          f"{result.info['anchors']} anchor speakers; {time.monotonic() - started:.0f} s)")
    write_text_file(args.markdown, table)
    if args.json:
        result.save_json(args.json)
    if args.det:
        result.plot_det(args.det, protocol=args.det_protocol)
    return result
