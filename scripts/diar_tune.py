"""Tune diarization defaults on data that is NOT the test split: pyannote-sample,
pyannote-clips train + development, and conversations simulated from Speech Commands
speakers (scripts/make_sc_concat.py) and from LibriSpeech train-clean-100 pieces (both
disjoint from LibriSpeech test-other). Never clips test, never test-other conversations.

    .venv/bin/python scripts/diar_tune.py --verbose '{}' '{"seg_speech_threshold": 0.6}'
    .venv/bin/python scripts/diar_tune.py --sets sample,train,dev,simtune,tc '{}' ...
    .venv/bin/python scripts/diar_tune.py --strangers 1 --distractors 20 --sets simname,tc '{}' ...

Each line: DER c=0 / c=0.25, exact count, miss / false alarm / confusion shares; for the
naming sets (simname, tc) also the share of reference speech carrying the right name.
Model outputs (Silero, segmentation, GE2E windows, enrollment vectors) are cached in memory
and under var/diar-tune-cache across runs (note: the Silero cache ignores vad_threshold).
"""
import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.diarization_compare import add_data_arguments, build_ours, set_items  # noqa: E402
from diarizer.evaluate import Scorer, count_speakers, folder_items  # noqa: E402
from diarizer import Diarizer, DiarizerConfig  # noqa: E402
from speechcore.audio import load_audio_file  # noqa: E402

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


NAME_SIM = ROOT / "var" / "diar-sets" / "sim-name-tune"


def make_name_sim(count=16, seed=13):
    """Naming tuning set: Speech Commands speakers (sc-concat), 2-5 speakers, at most 3
    turns each so that every speaker keeps >= 3 unused utterances to enroll from."""
    if len(list(NAME_SIM.glob("*.flac"))) >= count:
        return
    from diarizer.simulate import simulate_conversation
    from speechcore.vad import SileroVAD
    vad = SileroVAD()
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = 2 + i % 4
        c = simulate_conversation(ROOT / "var" / "corpora" / "sc-concat", num_speakers=n, num_turns=min(14, 3 * n),
                                  overlap_ratio=float(rng.uniform(0, 0.15)), seed=seed * 1000 + i, vad=vad)
        c.write(NAME_SIM, f"name{i:03d}")


TC_CORPUS = ROOT / "var" / "corpora" / "tc100-split"
TC_SIM = ROOT / "var" / "diar-sets" / "sim-tc100-tune"


def make_tc_sim(shared_data_dir: pathlib.Path, count=24, seed=17):
    """LibriSpeech train-clean-100 (disjoint from test-other): each speaker's ~12.5-s
    utterance cut into 3 pieces (var/corpora/tc100-split/<speaker>/pN.flac); conversations
    of 2-5 speakers with 2 turns each (naming enrolls from the third piece, ~4 s)."""
    if len(list(TC_SIM.glob("*.flac"))) >= count:
        return
    import soundfile as sf
    from diarizer.simulate import simulate_conversation
    from speechcore.vad import SileroVAD
    src = shared_data_dir / "librispeech" / "train-clean-100"
    for f in sorted(src.glob("*.flac")):
        out = TC_CORPUS / f.name.split("-")[0]
        if out.exists():
            continue
        w, sr = sf.read(f, dtype="float32")
        out.mkdir(parents=True)
        n = len(w) // 3
        for k in range(3):
            sf.write(out / f"p{k}.flac", w[k * n:(k + 1) * n], sr)
    vad = SileroVAD()
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = 2 + i % 4
        c = simulate_conversation(TC_CORPUS, num_speakers=n, num_turns=2 * n,
                                  overlap_ratio=float(rng.uniform(0, 0.15)), seed=seed * 1000 + i, vad=vad)
        c.write(TC_SIM, f"tc{i:03d}")


def _h(x):
    return hashlib.md5(np.ascontiguousarray(x).tobytes()).hexdigest()


CACHE_DIR = ROOT / "var" / "diar-tune-cache"


def _disk(name):
    """A dict persisted under var/diar-tune-cache (model outputs are deterministic)."""
    import pickle
    path = CACHE_DIR / f"{name}.pkl"
    try:
        return pickle.loads(path.read_bytes())
    except (FileNotFoundError, EOFError, pickle.UnpicklingError):
        return {}


def save_caches(*caches):
    import pickle
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for c in caches:
        (CACHE_DIR / f"{c.name}.pkl").write_bytes(pickle.dumps(c.cache))


class CachedEmbedder:
    name = "ge2e"

    def __init__(self, inner):
        self.inner, self.cache = inner, _disk(self.name)
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
    name = "silero"

    def __init__(self, inner):
        self.inner, self.cache = inner, _disk(self.name)

    def segments(self, wav):
        k = _h(wav)
        if k not in self.cache:
            self.cache[k] = self.inner.segments(wav)
        return self.cache[k]


class CachedDetector:
    name = "segmentation"

    def __init__(self, inner):
        self.inner, self.cache = inner, _disk(self.name)

    def analyse(self, wav, step_s=None, min_active_s=1.0):
        k = (_h(wav), step_s, min_active_s)
        if k not in self.cache:
            self.cache[k] = self.inner.analyse(wav, step_s=step_s, min_active_s=min_active_s)
        return self.cache[k]


def _enroll(sets, wavs, source, cached, cam, emb, strangers=0, distractors=0, n_utts=3):
    """Per conversation: Gallery of its speakers but the first ``strangers``, plus
    ``distractors`` speakers from elsewhere in the corpus, each from up to n_utts unused
    utterances."""
    import json as _json
    from diarizer.naming import Gallery
    from speechcore.embedder import l2_normalise
    out = {}
    for it in sets:
        meta = _json.loads(it.audio.with_suffix(".json").read_text())
        used = {u for us in meta["utterances"].values() for u in us}
        enroll, runtime, enrolled = [], [], []
        others = [d.name for d in sorted(source.iterdir()) if d.name not in meta["speakers"]]
        rng = np.random.default_rng(len(out))
        extra = [others[i] for i in rng.permutation(len(others))[:distractors]]
        for speaker in meta["speakers"][strangers:] + extra:
            files = sorted((source / speaker).iterdir())
            unused = [p for p in files if p.relative_to(source).as_posix() not in used][:n_utts]
            if not unused:  # nothing left to enroll from: this speaker is a stranger here
                continue
            enrolled.append(speaker)
            key = ("enroll", tuple(str(p) for p in unused))
            if key not in cached:
                ws = [load_audio_file(p) for p in unused]
                cached[key] = (l2_normalise(cam.embed(ws).mean(axis=0, keepdims=True))[0],
                               l2_normalise(emb.embed(ws).mean(axis=0, keepdims=True))[0])
            e, r = cached[key]
            enroll.append(e)
            runtime.append(r)
        out[it.uri] = (enrolled, Gallery(enrolled, np.stack(enroll), np.stack(runtime)))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=[],
                        help='JSON DiarizerConfig overrides, one run each (plus "no_overlap", and '
                             '"artifact": a folder name under nessa/artifacts)')
    parser.add_argument("--sets", default="sample,train,dev,simtune",
                        help="comma-separated: sample, train, dev, simtune, simname, tc")
    parser.add_argument("--strangers", type=int, default=0,
                        help="naming sets: the first N speakers of each conversation stay unenrolled")
    parser.add_argument("--distractors", type=int, default=0,
                        help="naming sets: also enroll N speakers who are not in the conversation")
    parser.add_argument("--verbose", action="store_true", help="one line per file on stderr")
    add_data_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    """One line per config over the chosen sets; simname = naming on sim-name-tune, tc = DER +
    naming on conversations from train-clean-100 pieces (make_tc_sim) (everyone enrolled from
    3 unused utterances, CAM++ + GE2E): share of reference speech carrying the right name."""
    from nessa.artifact import AlignmentArtifact
    from bench.diarization_naming import label_shares
    make_tune_sim()
    base, _ = build_ours(args.artifact, 1, overlap=True)
    emb, vad, det = CachedEmbedder(base.embedder), CachedVAD(base.vad), CachedDetector(base.overlap_detector)
    wanted = args.sets.split(",")
    data = args.shared_data_dir
    loaders = {"sample": lambda: set_items("sample", data), "train": lambda: set_items("clips-train", data),
               "dev": lambda: set_items("clips-dev", data), "simtune": lambda: folder_items(TUNE_SIM),
               "simname": lambda: (make_name_sim(), folder_items(NAME_SIM))[1],
               "tc": lambda: (make_tc_sim(data), folder_items(TC_SIM))[1]}
    sets = {n: loaders[n]() for n in wanted}
    wavs = {(n, it.uri): load_audio_file(it.audio) for n, rows in sets.items() for it in rows}
    galleries = {}
    if "simname" in sets or "tc" in sets:
        from enroll_models.campplus import CamPlusPlusEmbedder
        cached = _disk("enroll")
        cam = CamPlusPlusEmbedder()
        if "simname" in sets:
            galleries.update(_enroll(sets["simname"], wavs, ROOT / "var" / "corpora" / "sc-concat", cached,
                                     cam, emb, args.strangers, args.distractors))
        if "tc" in sets:
            galleries.update(_enroll(sets["tc"], wavs, TC_CORPUS, cached, cam, emb, args.strangers,
                                     args.distractors))
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        import pickle
        (CACHE_DIR / "enroll.pkl").write_bytes(pickle.dumps(cached))
    for text in args.configs:
        cfg = json.loads(text)
        no_overlap = cfg.pop("no_overlap", False)
        artifact = base.artifact
        if "artifact" in cfg:
            artifact = AlignmentArtifact.load(ROOT / "nessa" / "artifacts" / cfg.pop("artifact"))
        d = Diarizer(emb, artifact, vad=vad, config=DiarizerConfig(**cfg),
                     overlap_detector=None if no_overlap else det)
        line = {"cfg": text}
        for n, rows in sets.items():
            sc, ok = Scorer(), 0
            comp = np.zeros(3)
            named = [0, 0, 0, 0, 0]
            for it in rows:
                gallery = galleries[it.uri][1] if n in ("simname", "tc") else None
                r = d.diarize(wavs[(n, it.uri)], gallery=gallery)
                o = sc.add(it.uri, it.reference, r.segments, it.uem)
                ref_s = sum(s.end - s.start for s in it.reference) or 1.0
                comp += np.array([o["miss"], o["false_alarm"], o["confusion"]]) * ref_s
                ok += int(r.num_speakers == count_speakers(it.reference))
                if gallery is not None:
                    speakers = set(galleries[it.uri][0])
                    for lab, (c, t, dd) in label_shares(it.reference, r.segments, speakers).items():
                        off = 0 if lab in speakers else 3
                        named[off] += c
                        named[off + 1] += t
                        if off == 0:
                            named[2] += dd
                if args.verbose:
                    ci = r.info.get("clustering", {})
                    print(n, it.uri, count_speakers(it.reference), r.num_speakers, ci.get("eigengap_count"),
                          ci.get("threshold_count"), ci.get("segmentation_floor"), r.info["windows"],
                          {k: o[k] for k in ("der@0.0", "der@0.25", "miss", "false_alarm", "confusion")},
                          file=sys.stderr)
            t = sc.totals()
            total_ref = sum(sum(s.end - s.start for s in it.reference) for it in rows) or 1.0
            m, f, c = comp / total_ref
            line[n] = f"{t['der@0.0']:.3f}/{t['der@0.25']:.3f} {ok}/{len(rows)} m{m:.3f} f{f:.3f} c{c:.3f}"
            if n in ("simname", "tc"):
                line[n] += (f" named {named[0] / max(named[1], 1):.4f} (of det {named[0] / max(named[2], 1):.4f})"
                            f" strangers-unknown {named[3] / max(named[4], 1):.4f}")
        print(json.dumps(line), flush=True)
    save_caches(emb, vad, det)


if __name__ == "__main__":
    main(parse_args())
