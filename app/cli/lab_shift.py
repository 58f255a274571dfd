"""`nessa eval-shift`: the shipped scoring on conditions unlike LibriSpeech (telephone,
babble, reverberation, Speech Commands words, same-words impostors, other corpora), EER and
the measured FAR / FRR at the artifact's operating thresholds, per dev / test speaker half."""
from __future__ import annotations

import json
import pathlib
import time

from app.cli.common import fail, write_text_file
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    shift = sub.add_parser("eval-shift", help="domain-shift evaluation of an artifact's verify scoring "
                                              "(EER, FAR / FRR at its thresholds, dev and test halves)")
    shift.add_argument("--shared-data-dir", default=str(settings.shared_data_dir),
                       help="the shared speech folder (default: %(default)s)")
    shift.add_argument("--artifact", default=str(settings.bundled_artifacts_dir / settings.default_alignment),
                       help="alignment artifact directory (default: the service's default, %(default)s)")
    shift.add_argument("--only", action="append", default=None,
                       help="conditions whose name starts with this (repeatable; default: all)")
    shift.add_argument("--seed", type=int, default=0)
    shift.add_argument("--cache-dir", default=str(settings.cache_dir / "embeddings"))
    shift.add_argument("--json", help="write the rows and run info here")
    shift.add_argument("--markdown", help="write the table here (it is always printed)")
    shift.add_argument("--quiet", action="store_true", help="no progress bars")
    shift.add_argument("--methods", default=None,
                       help="compare gallery-aware scoring variants instead (comma-separated, from "
                            "nessa.lab.evaluation.shift_methods.METHODS, e.g. baseline,gallery-snorm); "
                            "reports the dev half only unless --halves says otherwise")
    shift.add_argument("--halves", default="dev", help="with --methods: halves to report (dev, test or "
                                                       "dev,test; a test look goes in docs/calibration.md's ledger)")
    shift.add_argument("--quality-report", action="store_true",
                       help="instead: how the shipped LLRs move with query quality (percentile SNR, band "
                            "limitation, speech seconds) on the first of --halves (shift_quality_report)")
    shift.set_defaults(func=cmd_eval_shift)


def cmd_eval_shift(args, settings: Settings) -> int:
    from app.model_catalog import load_embedder
    from nessa.artifact import AlignmentArtifact, ArtifactError
    from nessa.lab.evaluation.shift_eval import ShiftEmbedder, evaluate_shift, markdown
    from nessa.lab.evaluation.shift_protocol import build_conditions

    started = time.monotonic()
    if not pathlib.Path(args.shared_data_dir).is_dir():
        return fail(f"shared speech folder not found: {args.shared_data_dir}")
    try:
        artifact = AlignmentArtifact.load(args.artifact)
        enroll, runtime = load_embedder(settings.enroll_model), load_embedder(settings.runtime_model)
        artifact.check_embedders(runtime, enroll)
        conditions = build_conditions(args.shared_data_dir, args.seed, set(args.only) if args.only else None)
        embedder = ShiftEmbedder(enroll, runtime, args.cache_dir, progress=not args.quiet)
        if args.quality_report:
            return _quality_report(args, conditions, artifact, embedder, started)
        if args.methods:
            return _compare_methods(args, conditions, artifact, (enroll, runtime), embedder, started)
        rows, info = evaluate_shift(conditions, artifact, embedder, (settings.min_enroll_speech_seconds,
                                                                      settings.min_runtime_speech_seconds))
    except (ArtifactError, ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    info |= {"seed": args.seed, "conditions": {c.name: c.description for c in conditions},
             "seconds": round(time.monotonic() - started, 1)}
    _write(args, markdown(rows, info), rows, info, conditions, embedder)
    return 0


def _compare_methods(args, conditions, artifact, models, embedder, started: float) -> int:
    from nessa.lab.evaluation import shift_quality, shift_suspect
    from nessa.lab.evaluation.shift_methods import METHODS, bars_summary, evaluate_methods, is_method, methods_markdown
    from nessa.lab.evaluation.shift_protocol import HALVES

    methods, halves = _expand(args.methods.split(",")), tuple(args.halves.split(","))
    unknown = [m for m in methods if not is_method(m)] + [h for h in halves if h not in HALVES]
    if unknown:
        return fail(f"unknown method or half: {', '.join(unknown)} (methods: {', '.join(METHODS)}, "
                    f"{', '.join(shift_quality.METHOD_NAMES)}, suspect-<closed|open>-m<margin> or -t)")
    context = None
    if any(shift_quality.parse_method(m) for m in methods):
        context = _quality_context(args, conditions, artifact, models, embedder)
    rows, info = evaluate_methods(conditions, artifact, embedder, methods, halves, context)
    info |= {"seed": args.seed, "seconds": round(time.monotonic() - started, 1)}
    if context:
        info["quality_maps"] = {" | ".join(map(str, key)): maps for key, maps in context["maps"].items()}
    table = methods_markdown([r for r in rows if not r["method"].startswith("suspect-")], info)
    if any(m.startswith("suspect-") for m in methods):
        table += "\n\n" + shift_suspect.suspect_markdown(rows, info["thresholds"]["fused"])
    table += "\n\n" + bars_summary(rows)
    if context:
        from nessa.lab.evaluation.shift_quality_train import training_markdown

        table += "\n\n" + training_markdown(context["trials"], context["cohort"])
    _write(args, table, rows, info, conditions, embedder)
    return 0


def _quality_report(args, conditions, artifact, embedder, started: float) -> int:
    from nessa.lab.evaluation.shift_eval import operating_thresholds
    from nessa.lab.evaluation.shift_quality_report import quality_markdown, quality_rows
    from nessa.lab.evaluation.shift_quality_train import item_quality

    half = args.halves.split(",")[0]
    items = list(dict.fromkeys(i for c in conditions for i in c.items()))
    embedder.embed(items)
    quality_of = item_quality(items, embedder, pathlib.Path(args.cache_dir).parent / "quality-suspect" / "quality")
    thresholds = {path: operating_thresholds(artifact, path == "fused") for path in ("fused", "alignment")}
    per_condition, per_bin = quality_rows(conditions, artifact, embedder.vectors, quality_of, thresholds, half)
    info = {"artifact": artifact.name, "half": half, "thresholds": thresholds,
            "seconds": round(time.monotonic() - started, 1)}
    table = quality_markdown(per_condition, per_bin, list(thresholds["fused"]))
    _write(args, table, {"per_condition": per_condition, "per_bin": per_bin}, info, conditions, embedder)
    return 0


def _expand(methods: list[str]) -> list[str]:
    """``suspect-dev`` stands for every suspect rule tried on dev."""
    from nessa.lab.evaluation.shift_suspect import rule_names

    return [name for m in methods for name in (rule_names() if m == "suspect-dev" else [m])]


def _quality_context(args, conditions, artifact, models, embedder) -> dict:
    from nessa.lab.evaluation.shift_quality_train import method_context

    return method_context(artifact, models[0], models[1], args.shared_data_dir, args.cache_dir, conditions,
                          embedder, args.seed, progress=not args.quiet)


def _write(args, table: str, rows: list, info: dict, conditions, embedder) -> None:
    print(table)
    print(f"({len(conditions)} conditions, {len(embedder.vectors)} items; {info['seconds']:.0f} s)")
    write_text_file(args.markdown, table)
    if args.json:
        write_text_file(args.json, json.dumps({"rows": rows, "info": info}, indent=1, default=float))
