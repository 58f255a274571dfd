"""`nessa eval-vad`: missed speech (recall of the clean-audio speech) and false alarms of the
Silero VAD under narrowband, quiet, 8 kHz and babble conditions, per detector variant and
dev / test speaker half (issue #12; docs/vad.md)."""
from __future__ import annotations

import json
import pathlib
import sys
import time

from app.cli.common import fail, write_text_file
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    vad = sub.add_parser("eval-vad", help="VAD missed speech and false alarms under channel and level shifts "
                                          "(recall, speech seconds, speakers under the enrollment minimum)")
    vad.add_argument("--shared-data-dir", default=str(settings.shared_data_dir),
                     help="the shared speech folder (default: %(default)s)")
    vad.add_argument("--variants", default=None,
                     help="detector variants, comma-separated, from nessa.lab.evaluation.vad_recall.VARIANTS "
                          "(default: all)")
    vad.add_argument("--halves", default="dev", help="halves to measure: dev, test or dev,test (a test look "
                                                     "goes in docs/vad.md's ledger; default: %(default)s)")
    vad.add_argument("--corpora", default=None, help="only these corpora, comma-separated (test-other, "
                                                     "speech-commands, extra-speakers; default: all)")
    vad.add_argument("--seed", type=int, default=0)
    vad.add_argument("--json", help="write the rows, per-file records and run info here")
    vad.add_argument("--markdown", help="write the tables here (they are always printed)")
    vad.add_argument("--quiet", action="store_true", help="no progress")
    vad.set_defaults(func=cmd_eval_vad)


def cmd_eval_vad(args, settings: Settings) -> int:
    import torch

    from nessa.lab.evaluation import vad_recall as vr

    started = time.monotonic()
    torch.set_num_threads(max(1, settings.torch_threads))
    shared = pathlib.Path(args.shared_data_dir)
    if not shared.is_dir():
        return fail(f"shared speech folder not found: {shared}")
    variants = args.variants.split(",") if args.variants else list(vr.VARIANTS)
    halves = tuple(args.halves.split(","))
    unknown = [v for v in variants if v not in vr.VARIANTS] + [h for h in halves if h not in vr.HALVES]
    if unknown:
        return fail(f"unknown variant or half: {', '.join(unknown)} (variants: {', '.join(vr.VARIANTS)})")
    if "baseline" not in variants:
        variants.insert(0, "baseline")  # the newly-under-minimum count needs it on clean audio
    chosen = {name: vr.VARIANTS[name] for name in variants}
    progress = None if args.quiet else (lambda name: print(f"  {name}", file=sys.stderr, flush=True))
    try:
        speech = vr.speech_clips(shared, args.seed)
        if args.corpora:
            speech = [c for c in speech if c.corpus in args.corpora.split(",")]
        noise = vr.noise_clips(shared)
        conds = vr.conditions(vr.babble_talkers(shared))
        records = vr.measure(speech, conds, chosen, vr.assign_halves(speech), halves, args.seed, True, progress)
        noise_records = vr.measure(noise, conds, chosen, vr.assign_halves(noise), halves, args.seed, False,
                                   progress)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    speech_rows, noise_rows = vr.speech_rows(records), vr.noise_rows(noise_records)
    table = vr.markdown(speech_rows, noise_rows, variants)
    info = {"seed": args.seed, "halves": halves, "variants": chosen,
            "conditions": {c.name: c.description for c in conds}, "seconds": round(time.monotonic() - started, 1)}
    print(table)
    print(f"({len(records) + len(noise_records)} measurements; {info['seconds']:.0f} s)")
    write_text_file(args.markdown, table)
    if args.json:
        payload = {"speech": speech_rows, "noise": noise_rows, "records": records + noise_records, "info": info}
        write_text_file(args.json, json.dumps(payload, indent=1, default=str))
    return 0
