"""`nessa diarize`, `nessa diarize-eval`, `nessa simulate`: who spoke when."""
from __future__ import annotations

from app.cli.common import fail, open_services
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    diar = sub.add_parser("diarize", help="who spoke when in an audio file")
    diar.add_argument("file")
    diar.add_argument("--rttm", help="write RTTM here")
    diar.add_argument("--json", help="write the JSON result here")
    diar.add_argument("--name-against-gallery", action="store_true",
                      help="name clusters against the enrolled profiles (unknown-N otherwise)")
    diar.add_argument("--num-speakers", type=int)
    diar.add_argument("--min-speakers", type=int)
    diar.add_argument("--max-speakers", type=int)
    diar.set_defaults(func=cmd_diarize)

    deval = sub.add_parser("diarize-eval", help="DER/JER on a folder of audio + reference RTTM (and UEM/.lst)")
    deval.add_argument("folder")
    deval.add_argument("--subset", action="append", help=".lst subset(s), e.g. development, test")
    deval.add_argument("--plots", help="write reference-vs-hypothesis timeline PNGs here")
    deval.add_argument("--hyp-dir", help="write hypothesis RTTMs here")
    deval.add_argument("--json", help="write the full report here")
    deval.set_defaults(func=cmd_diarize_eval)

    sim = sub.add_parser("simulate", help="conversations from <speaker>/<utterance> folders, with reference RTTM")
    sim.add_argument("source")
    sim.add_argument("--out", required=True)
    sim.add_argument("--conversations", type=int, default=20)
    sim.add_argument("--speakers", type=int, nargs="+", default=[2, 3, 4, 5])
    sim.add_argument("--turns", type=int, default=12)
    sim.add_argument("--overlap", type=float, default=0.1, help="fraction of turns that overlap the previous one")
    sim.add_argument("--snr", type=float, help="add noise at this SNR (dB)")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)


def cmd_diarize(args, settings: Settings) -> int:
    import json
    import pathlib

    from app.services import diarization

    path = pathlib.Path(args.file)
    if not path.is_file():
        return fail(f"no such audio file: {path}")
    services = open_services(settings)
    body = diarization.diarize_wav(
        services, _decode_file(path, settings), num_speakers=args.num_speakers,
        min_speakers=args.min_speakers, max_speakers=args.max_speakers,
        name_against_gallery=args.name_against_gallery)
    if args.rttm:
        pathlib.Path(args.rttm).write_text(diarization.rttm_text(body, path.stem))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(body, indent=2))
    for seg in body["segments"]:
        who = seg["speaker"]["name"] if seg.get("speaker") else seg["label"]
        print(f"{seg['start']:8.2f} {seg['end']:8.2f}  {who}")
    return 0


def cmd_diarize_eval(args, settings: Settings) -> int:
    import json
    import pathlib

    from app.services.diarization import build_diarizer
    from diarizer.evaluate import evaluate_folder

    folder = pathlib.Path(args.folder)
    if not folder.is_dir():
        return fail(f"no such folder: {folder}")
    services = open_services(settings)
    report = evaluate_folder(build_diarizer(services), folder, args.subset, plot_dir=args.plots,
                             hypothesis_dir=args.hyp_dir)
    if not report["files"]:
        return fail(f"no audio with a reference RTTM found in {folder}")
    print("| file | speakers ref/hyp | DER c=0 | JER c=0 | DER c=0.25 | JER c=0.25 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in report["files"]:
        print(f"| {row['uri']} | {row['ref_speakers']}/{row['hyp_speakers']} | {row['der@0.0']:.1%} | "
              f"{row['jer@0.0']:.1%} | {row['der@0.25']:.1%} | {row['jer@0.25']:.1%} |")
    totals = report["totals"]
    print(f"| **all** | count right {report['count_accuracy']:.0%} | {totals['der@0.0']:.1%} | "
          f"{totals['jer@0.0']:.1%} | {totals['der@0.25']:.1%} | {totals['jer@0.25']:.1%} |")
    print(f"real-time factor {report['rtf']:.4f} over {report['audio_seconds']:.0f} s of audio")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_simulate(args, settings: Settings) -> int:
    import pathlib

    from diarizer.simulate import simulate_conversation

    source = pathlib.Path(args.source)
    if not source.is_dir():
        return fail(f"no such folder: {source}")
    out = pathlib.Path(args.out)
    for index in range(args.conversations):
        speakers = args.speakers[index % len(args.speakers)]
        try:
            conversation = simulate_conversation(source, num_speakers=speakers, num_turns=args.turns,
                                                 overlap_ratio=args.overlap, snr_db=args.snr,
                                                 seed=args.seed + index)
        except ValueError as exc:
            return fail(str(exc))
        uri = f"sim{index:03d}"
        paths = conversation.write(out, uri)
        print(f"{paths['audio']}  {speakers} speakers, {conversation.duration:.1f} s")
    return 0


def _decode_file(path, settings: Settings):
    from app.errors import ApiError
    from app.services.audio_input import upload_limits
    from speechcore.audio import decode_audio
    from speechcore.audio_errors import AudioError

    try:
        return decode_audio(path.read_bytes(), limits=upload_limits(settings)).wav
    except AudioError as exc:
        raise ApiError(exc.http_status, exc.code, exc.message, exc.detail) from exc
