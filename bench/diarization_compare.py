"""Ours vs senko on the same files in one run, scored by the same pyannote.metrics code.

    python -m bench.diarization_compare --out var/diar-compare            # everything
    python -m bench.diarization_compare --sets sample clips-dev --no-senko
    python -m bench.diarization_compare --senko-cache var/diar-compare/senko   # reuse senko RTTMs
    python -m bench.diarization_compare --artifact ridge-ge2e256-to-campplus192-v1 --shared-data-dir DIR

Sets: ``sample`` (conversations/pyannote-sample), ``clips-train`` / ``clips-dev`` /
``clips-test`` (conversations/pyannote-clips with UEMs), ``sim`` (simulated test-other
conversations: 2-5 speakers, per-conversation overlap ratio drawn in 0-15 %, written once to
``var/diar-sets/sim-test-other`` as FLAC + RTTM so both systems read the same audio).

senko runs in its own virtualenv (``var/senko-venv``) through ``scripts/senko_baseline.py``
(torch on one thread). Both systems are scored with ``diarizer.evaluate.Scorer``: DER and
JER at collar 0 and 0.25 s, overlapped speech scored, UEM where given. Prints one markdown
table and writes ``<out>/report.json`` and the hypothesis RTTMs. The real speech is read from
``--shared-data-dir`` (default: the service's ``shared_data_dir`` setting).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from app.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIM_DIR = ROOT / "var" / "diar-sets" / "sim-test-other"
SETS = ("sample", "clips-train", "clips-dev", "clips-test", "sim")
DEFAULT_SETS = ("sample", "clips-dev", "clips-test", "sim")
SENKO_PYTHON = ROOT / "var" / "senko-venv" / "bin" / "python"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the real speech is and which alignment names the speakers: the options every
    diarization bench and tuning script shares, defaulting to the service's settings."""
    settings = Settings.from_env()
    parser.add_argument("--shared-data-dir", type=pathlib.Path, default=settings.shared_data_dir,
                        help="real speech (default: the shared_data_dir setting, NESSA_SHARED_DATA_DIR)")
    parser.add_argument("--artifact", default=settings.default_alignment,
                        help="alignment artifact, a bundled name or a folder (default: the service's "
                             "default alignment; naming thresholds come from the artifact itself)")


def make_simulated(source: pathlib.Path, out_dir=SIM_DIR, count: int = 24, seed: int = 7,
                   vad=None) -> pathlib.Path:
    """``count`` conversations from ``source`` (test-other), speakers cycling 2..5, overlap
    ratio uniform in [0, 0.15], 14 turns of 2-6 s; skipped when the folder already holds them."""
    import numpy as np

    from diarizer.simulate import simulate_conversation

    out_dir = pathlib.Path(out_dir)
    if len(list(out_dir.glob("sim*.flac"))) >= count:
        return out_dir
    if vad is None:
        from speechcore.vad import SileroVAD
        vad = SileroVAD()
    rng = np.random.default_rng(seed)
    for index in range(count):
        n = 2 + index % 4
        overlap = float(rng.uniform(0.0, 0.15))
        conversation = simulate_conversation(source, num_speakers=n, num_turns=14,
                                             overlap_ratio=overlap, seed=seed * 1000 + index, vad=vad)
        conversation.write(out_dir, f"sim{index:03d}")
    return out_dir


def set_items(name: str, shared_data_dir: pathlib.Path):
    from diarizer.evaluate import folder_items

    if name == "sample":
        return folder_items(shared_data_dir / "conversations" / "pyannote-sample")
    if name.startswith("clips-"):
        subset = {"train": "train", "dev": "development", "test": "test"}[name.split("-", 1)[1]]
        return folder_items(shared_data_dir / "conversations" / "pyannote-clips", [subset])
    if name == "sim":
        return folder_items(make_simulated(shared_data_dir / "librispeech" / "test-other"))
    raise ValueError(f"unknown set {name!r}; known: {SETS}")


def artifact_dir(chosen: str) -> pathlib.Path:
    """An artifact folder, or the bundled artifact (under nessa/artifacts) of that name."""
    path = pathlib.Path(chosen)
    return path if path.is_dir() else ROOT / "nessa" / "artifacts" / chosen


def build_ours(artifact: str, threads: int = 1, overlap: bool = True, **config):
    """(diarizer, load seconds): GE2E + the alignment ``artifact`` (``artifact_dir``) +
    segmentation model (Silero only when the config needs it)."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from diarizer import Diarizer, DiarizerConfig
    from nessa.artifact import AlignmentArtifact
    from runtime_models.ge2e import GE2EEmbedder

    detector = None
    if overlap:
        from diarizer.overlap import OverlapDetector
        detector = OverlapDetector()
    diarizer = Diarizer(GE2EEmbedder(), AlignmentArtifact.load(artifact_dir(artifact)),
                        config=DiarizerConfig(**config), overlap_detector=detector)
    return diarizer, time.perf_counter() - start


def run_senko(entries, out_dir: pathlib.Path, threads: int = 1) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / "files.txt"
    listing.write_text("\n".join(f"{uri}={path}" for uri, path in entries) + "\n", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([str(SENKO_PYTHON), str(ROOT / "scripts" / "senko_baseline.py"), "--out", str(out_dir),
                    "--list", str(listing), "--threads", str(threads)], check=True, env=env)
    return json.loads((out_dir / "timing.json").read_text())


def _key(set_name: str, uri: str) -> str:
    from diarizer.evaluate import _fold

    return f"{set_name}__{_fold(uri)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diarization_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), choices=SETS)
    parser.add_argument("--out", default=str(ROOT / "var" / "diar-compare"))
    parser.add_argument("--no-senko", action="store_true")
    parser.add_argument("--senko-cache", help="read senko RTTMs + timing.json from here instead of running it")
    parser.add_argument("--no-overlap", action="store_true", help="our pipeline without the segmentation model")
    parser.add_argument("--config", default="{}", help="JSON DiarizerConfig overrides for ours")
    parser.add_argument("--threads", type=int, default=1)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)

    from diarizer.evaluate import Scorer, count_speakers
    from diarizer.result import parse_rttm
    from speechcore.audio import load_audio_file

    diarizer, load_s = build_ours(args.artifact, args.threads, overlap=not args.no_overlap,
                                  **json.loads(args.config))
    items = {name: set_items(name, args.shared_data_dir) for name in args.sets}

    # ---- ours
    ours_dir = out / "ours"
    ours_dir.mkdir(parents=True, exist_ok=True)
    hyps = {"ours": {}, "senko": {}}
    ours_time, audio_time, stage_times, threshold_counts = 0.0, 0.0, {}, {}
    for name, rows in items.items():
        for item in rows:
            wav = load_audio_file(item.audio)
            start = time.perf_counter()
            result = diarizer.diarize(wav)
            elapsed = time.perf_counter() - start
            ours_time += elapsed
            audio_time += len(wav) / 16000
            for stage, seconds in result.info.get("timings", {}).items():
                stage_times[stage] = stage_times.get(stage, 0.0) + seconds
            key = _key(name, item.uri)
            hyps["ours"][key] = result.segments
            threshold_counts[key] = result.info.get("clustering", {}).get("threshold_count", 0)
            result.write_rttm(ours_dir / f"{key}.rttm", uri=key)
            print(f"ours {key}: {result.num_speakers} spk (ref {count_speakers(item.reference)}), "
                  f"{elapsed:.2f}s", file=sys.stderr)

    # ---- senko
    senko_timing = None
    if not args.no_senko:
        senko_dir = pathlib.Path(args.senko_cache) if args.senko_cache else out / "senko"
        entries = [(_key(name, item.uri), str(item.audio)) for name, rows in items.items() for item in rows]
        if not args.senko_cache:
            senko_timing = run_senko(entries, senko_dir, args.threads)
        else:
            senko_timing = json.loads((senko_dir / "timing.json").read_text())
        for key, _ in entries:
            path = senko_dir / f"{key}.rttm"
            if not path.exists():
                raise FileNotFoundError(f"no senko RTTM for {key} in {senko_dir}")
            hyps["senko"][key] = next(iter(parse_rttm(path).values()), [])

    # ---- score, same code for both
    groups = [(name, [name]) for name in args.sets]
    if "clips-dev" in args.sets and "clips-test" in args.sets:
        groups.insert(args.sets.index("clips-test") + 1, ("clips dev+test", ["clips-dev", "clips-test"]))
    report = {"load_s": {"ours": round(load_s, 3)}, "rtf": {"ours": round(ours_time / audio_time, 4)},
              "stage_seconds_ours": {k: round(v, 2) for k, v in stage_times.items()},
              "audio_seconds": round(audio_time, 1), "sets": {}}
    if senko_timing:
        files = senko_timing["files"]
        report["load_s"]["senko"] = senko_timing["load_s"]
        keys = [_key(n, i.uri) for n, rows in items.items() for i in rows]
        report["rtf"]["senko"] = round(sum(files[k]["compute_s"] for k in keys)
                                       / sum(files[k]["audio_s"] for k in keys), 4)
    systems = [s for s in ("ours", "senko") if hyps[s]]
    for label, members in groups:
        report["sets"][label] = {}
        for system in systems:
            scorer, exact, n, exact_threshold = Scorer(), 0, 0, 0
            for name in members:
                for item in items[name]:
                    hyp = hyps[system][_key(name, item.uri)]
                    scorer.add(item.uri, item.reference, hyp, item.uem)
                    if item.reference:
                        n += 1
                        exact += int(count_speakers(hyp) == count_speakers(item.reference))
                        exact_threshold += int(threshold_counts.get(_key(name, item.uri))
                                               == count_speakers(item.reference))
            report["sets"][label][system] = dict(scorer.totals(), count=f"{exact}/{n}", files=n)
            if system == "ours":
                report["sets"][label][system]["threshold_only_count"] = f"{exact_threshold}/{n}"
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(report, systems))
    return 0


def markdown(report: dict, systems) -> str:
    lines = ["| set (files) | system | DER c=0 | JER c=0 | DER c=0.25 | JER c=0.25 | exact count "
             "(threshold-only AHC) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, by_system in report["sets"].items():
        for system in systems:
            r = by_system[system]
            lines.append(f"| {label} ({r['files']}) | {system} | {r['der@0.0']:.1%} | {r['jer@0.0']:.1%} | "
                         f"{r['der@0.25']:.1%} | {r['jer@0.25']:.1%} | {r['count']}"
                         + (f" ({r['threshold_only_count']})" if "threshold_only_count" in r else "") + " |")
    lines.append("")
    lines.append("| system | real-time factor (1 thread) | model load |")
    lines.append("| --- | --- | --- |")
    for system in systems:
        lines.append(f"| {system} | {report['rtf'][system]:.4f} | {report['load_s'][system]:.1f} s |")
    return "\n".join(lines).replace("%", " %")


if __name__ == "__main__":
    raise SystemExit(main())
