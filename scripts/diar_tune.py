"""Tune diarization defaults on data that is NOT the test split: pyannote-sample,
pyannote-clips train + development, and conversations simulated from Speech Commands
speakers (scripts/make_sc_concat.py; disjoint from LibriSpeech test-other).

    VERBOSE=1 .venv/bin/python scripts/diar_tune.py '{}' '{"seg_speech_threshold": 0.5}'

Model outputs (Silero, segmentation, GE2E windows) are cached in memory across configs.
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.diarization_compare import build_ours, set_items  # noqa: E402
from diarizer.evaluate import Scorer, count_speakers, folder_items  # noqa: E402
from diarizer.pipeline import Diarizer, DiarizerConfig  # noqa: E402
from speechcore.audio import load_audio_file  # noqa: E402

VERBOSE = bool(int(__import__("os").environ.get("VERBOSE", "0")))
TUNE_SIM = ROOT / "var" / "diar-sets" / "sim-tune"


def make_tune_sim(count=16, seed=11):
    if len(list(TUNE_SIM.glob("*.flac"))) >= count:
        return
    from diarizer.simulate import simulate_conversation
    from speechcore.vad import SileroVAD
    vad = SileroVAD()
    rng = np.random.default_rng(seed)
    for i in range(count):
        c = simulate_conversation(ROOT / "var" / "corpora" / "sc-concat", num_speakers=2 + i % 4, num_turns=14,
                                  overlap_ratio=float(rng.uniform(0, 0.15)), seed=seed * 1000 + i, vad=vad)
        c.write(TUNE_SIM, f"tune{i:03d}")


def _h(x):
    return hashlib.md5(np.ascontiguousarray(x).tobytes()).hexdigest()


class CachedEmbedder:
    def __init__(self, inner):
        self.inner, self.cache = inner, {}
        self.version, self.dim = inner.version, inner.dim

    def embed(self, pieces):
        keys = [_h(p) for p in pieces]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            out = self.inner.embed([pieces[i] for i in todo])
            for i, v in zip(todo, out):
                self.cache[keys[i]] = v
        return np.stack([self.cache[k] for k in keys])


class CachedVAD:
    def __init__(self, inner):
        self.inner, self.cache = inner, {}

    def segments(self, wav):
        k = _h(wav)
        if k not in self.cache:
            self.cache[k] = self.inner.segments(wav)
        return self.cache[k]


class CachedDetector:
    def __init__(self, inner):
        self.inner, self.cache = inner, {}

    def analyse(self, wav, step_s=None, min_active_s=1.0):
        k = (_h(wav), step_s, min_active_s)
        if k not in self.cache:
            self.cache[k] = self.inner.analyse(wav, step_s=step_s, min_active_s=min_active_s)
        return self.cache[k]


def main(configs):
    make_tune_sim()
    base, _ = build_ours(1, overlap=True)
    emb, vad, det = CachedEmbedder(base.embedder), CachedVAD(base.vad), CachedDetector(base.overlap_detector)
    sets = {"sample": set_items("sample"), "train": set_items("clips-train"), "dev": set_items("clips-dev"),
            "simtune": folder_items(TUNE_SIM)}
    wavs = {(n, it.uri): load_audio_file(it.audio) for n, rows in sets.items() for it in rows}
    for text in configs:
        cfg = json.loads(text)
        no_overlap = cfg.pop("no_overlap", False)
        d = Diarizer(emb, base.artifact, vad=vad, config=DiarizerConfig(**cfg),
                     overlap_detector=None if no_overlap else det)
        line = {"cfg": text}
        for n, rows in sets.items():
            sc, ok = Scorer(), 0
            for it in rows:
                r = d.diarize(wavs[(n, it.uri)])
                sc.add(it.uri, it.reference, r.segments, it.uem)
                ok += int(r.num_speakers == count_speakers(it.reference))
                if VERBOSE:
                    ci = r.info.get("clustering", {})
                    print(n, it.uri, count_speakers(it.reference), r.num_speakers, ci.get("eigengap_count"),
                          ci.get("threshold_count"), ci.get("segmentation_floor"), r.info["windows"], file=sys.stderr)
            t = sc.totals()
            line[n] = f"{t['der@0.0']:.3f}/{t['der@0.25']:.3f} {ok}/{len(rows)}"
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
