"""Naming accuracy on the simulated test-other conversations of bench.diarization_compare.

    python -m bench.diarization_naming [--folder var/diar-sets/sim-test-other] [--strangers 1]
        [--artifact NAME_OR_FOLDER] [--shared-data-dir DIR]

Each conversation's speakers are enrolled (CAM++ enrollment vector + GE2E runtime vector,
as the service does) from 3 of their utterances that the conversation did not use; with
``--strangers N`` the first N speakers of each conversation stay unenrolled. Reports, over
all conversations, the share of reference speech time (10-ms frames) that carries the
right name (enrolled speakers) and the share that carries an ``unknown-N`` label
(strangers), plus exact-count accuracy vs the threshold-only AHC baseline.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from bench.diarization_compare import add_data_arguments, build_ours, make_simulated

ROOT = pathlib.Path(__file__).resolve().parent.parent


def label_shares(reference, hypothesis, enrolled) -> dict:
    """Frames of reference speech: per reference speaker (correct, total, frames with any
    hypothesis label)."""
    frame = 0.01
    end = max([s.end for s in reference] + [s.end for s in hypothesis] + [0.0])
    n = int(np.ceil(end / frame)) + 1
    hyp = [set() for _ in range(n)]
    for s in hypothesis:
        for i in range(int(round(s.start / frame)), int(round(s.end / frame))):
            hyp[i].add(s.label)
    out = {}
    for s in reference:
        ok = tot = det = 0
        for i in range(int(round(s.start / frame)), int(round(s.end / frame))):
            tot += 1
            det += bool(hyp[i])
            if s.label in enrolled:
                ok += s.label in hyp[i]
            else:
                ok += any(x.startswith("unknown-") for x in hyp[i])
        c, t, d = out.get(s.label, (0, 0, 0))
        out[s.label] = (c + ok, t + tot, d + det)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diarization_naming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(ROOT / "var" / "diar-sets" / "sim-test-other"))
    parser.add_argument("--source", default=None, help="the <speaker>/<utterance> corpus (default test-other)")
    parser.add_argument("--strangers", type=int, default=0)
    parser.add_argument("--enroll-utterances", type=int, default=3)
    parser.add_argument("--config", default="{}")
    add_data_arguments(parser)
    args = parser.parse_args(argv)

    from diarizer.evaluate import folder_items
    from diarizer.naming import Gallery
    from enroll_models.campplus import CamPlusPlusEmbedder
    from speechcore.audio import load_audio_file
    from speechcore.embedder import l2_normalise

    test_other = args.shared_data_dir / "librispeech" / "test-other"
    source = pathlib.Path(args.source) if args.source else test_other
    diarizer, _ = build_ours(args.artifact, 1, overlap=True, **json.loads(args.config))
    make_simulated(test_other, args.folder)
    campplus = CamPlusPlusEmbedder()
    enrolled_ok = enrolled_tot = stranger_ok = stranger_tot = enrolled_det = stranger_det = 0
    count_ok = thr_ok = n = 0
    for item in folder_items(args.folder):
        meta = json.loads(item.audio.with_suffix(".json").read_text())
        speakers = meta["speakers"]
        enrolled = speakers[args.strangers:]
        used = {u for us in meta["utterances"].values() for u in us}
        enroll, runtime = [], []
        for speaker in enrolled:
            files = sorted((source / speaker).iterdir())
            unused = [p for p in files if p.relative_to(source).as_posix() not in used][:args.enroll_utterances]
            wavs = [load_audio_file(p) for p in unused]
            enroll.append(l2_normalise(campplus.embed(wavs).mean(axis=0, keepdims=True))[0])
            runtime.append(l2_normalise(diarizer.embedder.embed(wavs).mean(axis=0, keepdims=True))[0])
        gallery = Gallery(list(enrolled), np.stack(enroll), np.stack(runtime))
        result = diarizer.diarize(load_audio_file(item.audio), gallery=gallery)
        shares = label_shares(item.reference, result.segments, set(enrolled))
        row = {"uri": item.uri, "speakers": len(speakers), "hyp": result.num_speakers,
               "names": [s.label for s in result.speakers]}
        for label, (ok, tot, det) in shares.items():
            if label in enrolled:
                enrolled_ok, enrolled_tot, enrolled_det = enrolled_ok + ok, enrolled_tot + tot, enrolled_det + det
            else:
                stranger_ok, stranger_tot, stranger_det = stranger_ok + ok, stranger_tot + tot, stranger_det + det
            row[label] = round(ok / max(tot, 1), 3)
        n += 1
        count_ok += result.num_speakers == len(speakers)
        thr_ok += result.info.get("clustering", {}).get("threshold_count") == len(speakers)
        print(json.dumps(row), file=sys.stderr)
    report = {"conversations": n, "strangers_per_conversation": args.strangers,
              "artifact": diarizer.artifact.name,
              "enrolled_named_correctly": round(enrolled_ok / max(enrolled_tot, 1), 4),
              "strangers_unknown": round(stranger_ok / max(stranger_tot, 1), 4) if stranger_tot else None,
              # the same shares over the reference speech the system labelled at all (not missed)
              "enrolled_named_correctly_of_detected": round(enrolled_ok / max(enrolled_det, 1), 4),
              "strangers_unknown_of_detected": (round(stranger_ok / max(stranger_det, 1), 4)
                                                if stranger_tot else None),
              "count_accuracy": round(count_ok / n, 4), "threshold_only_count_accuracy": round(thr_ok / n, 4)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
