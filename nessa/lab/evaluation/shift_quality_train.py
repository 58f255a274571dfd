"""Training material for the quality maps of ``shift_quality`` (issue #12; research code):
LibriSpeech train-clean-100 speakers (never the evaluation's corpora) through the domain-shift
channels (``shift_channels``: telephone, babble, reverberation) and short crops, scored with
the shipped scoring, and the per-item quality estimates (cached).

The shared train-clean-100 holds one ~12.5-s utterance per speaker, so:

* ``N_TRAIN`` speakers are picked by a seeded hash; the others are babble talkers. Each
  picked utterance is cut: audio before ``SPLIT_S`` is profile material, after it query
  material (queries from the first ``N_QUERY_SPEAKERS`` utterances long enough to leave
  >= 2.5 s after the cut).
* Profiles: the first ``N_PROFILES`` picked speakers, variants clean / telephone /
  reverberant (the profile part through the channel) and short (a 2-s crop). Queries: every
  picked speaker's query part, variants clean / telephone / babble 10 / 5 dB / reverberant /
  short (2 s).
* Trials: every query of a variant against every profile of a variant: clean profiles
  against every query variant (mismatch), telephone against telephone and reverberant against
  reverberant (a gallery on the same channel), short against short (Speech Commands-like).
  Non-targets are different speakers; the few targets are halves of one utterance (same
  session: optimistic), reported, not fitted.
* The artifact's S-norm cohort *is* train-clean-100 (251 speakers): the picked speakers'
  cohort rows (matched by the runtime cosine of their clean profile or query part) are left out of
  the cohort while scoring the training trials, so no trial is normalised against itself.

Items go through ``ShiftEmbedder`` (channel -> Silero VAD -> models, the same embedding
cache); query items are embedded with the runtime model only (verify never embeds a query
with the enrollment model).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from nessa.lab.data import list_utterances
from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation import shift_quality as quality
from nessa.lab.evaluation.shift_eval import PATHS, ShiftEmbedder
from nessa.lab.evaluation.shift_protocol import Item, rng_for, treatment
from nessa.lab.evaluation.systems import mean_vectors
from nessa.scoring import CandidateScorer

N_TRAIN, N_PROFILES, N_QUERY_SPEAKERS = 120, 40, 60
SPLIT_S, SHORT_S = 6.0, 2.0
PROFILE_VARIANTS = ("clean", "telephone", "reverb", "short")
QUERY_VARIANTS = ("clean", "telephone", "babble10", "babble5", "reverb", "short")
COMBOS = tuple(("clean", q) for q in QUERY_VARIANTS) + (("telephone", "telephone"), ("reverb", "reverb"),
                                                       ("short", "short"))
ESTIMATOR_VERSION = 1


class CropEmbedder(ShiftEmbedder):
    """``ShiftEmbedder`` that also knows a ``crop`` treatment: a slice of the sources, then
    the channel named in its ``then``."""

    def audio(self, item: Item) -> np.ndarray:
        spec = json.loads(item.treatment)
        if spec["kind"] != "crop":
            return super().audio(item)
        wav = np.concatenate([self.raw(path) for path in item.sources])
        start = int(spec["start"] * quality.SAMPLE_RATE)
        stop = len(wav) if spec["seconds"] is None else start + int(spec["seconds"] * quality.SAMPLE_RATE)
        wav, then = wav[start:stop], spec["then"]
        if then["kind"] == "telephone":
            return channels.telephone(wav)
        if then["kind"] == "babble":
            return channels.add_babble(wav, [self.raw(p) for p in then["talkers"]], then["snr_db"], then["seed"])
        if then["kind"] == "reverb":
            return channels.reverberate(wav, channels.synthetic_rir(then["rt60"], then["seed"], drr_db=then["drr_db"]))
        return wav


def _crop(path: str, start: float, seconds: float | None, then: dict) -> Item:
    return Item((path,), json.dumps({"kind": "crop", "start": start, "seconds": seconds, "then": then,
                                     "talkers": then.get("talkers", [])}, sort_keys=True))


def _variant_item(path: str, variant: str, talkers: list[str], seed: int, query: bool) -> Item:
    name = pathlib.Path(path).name
    tag = int.from_bytes(hashlib.sha256(f"{seed}/{name}/{variant}/{query}".encode()).digest()[:6], "little")
    start, seconds = (SPLIT_S, None) if query else (0.0, SPLIT_S)
    if variant == "short":
        return _crop(path, start + 0.5, SHORT_S, {"kind": "clean"})
    if variant.startswith("babble"):
        rng = rng_for(seed, "train-babble", name)
        picked = sorted(rng.choice(len(talkers), size=int(rng.integers(3, 6)), replace=False).tolist())
        then = {"kind": "babble", "snr_db": float(variant.removeprefix("babble")),
                "talkers": [talkers[i] for i in picked], "seed": tag}
    elif variant == "reverb":
        then = {"kind": "reverb", "rt60": 0.5, "drr_db": 0.0, "seed": tag}
    else:
        then = {"kind": variant}
    return _crop(path, start, seconds, then)


def training_set(shared_dir, seed: int = 0) -> dict:
    """{"profiles": {variant: [(speaker, items)]}, "queries": {variant: [(speaker, item)]}}."""
    utterances = sorted(list_utterances(pathlib.Path(shared_dir) / "librispeech" / "train-clean-100"))
    order = sorted(utterances, key=lambda u: hashlib.sha256(f"{seed}/quality-train/{u[0]}".encode()).hexdigest())
    picked, talkers = order[:N_TRAIN], [path for _, path in order[N_TRAIN:]]
    profiles = {v: [(s, (_variant_item(p, v, talkers, seed, False),)) for s, p in picked[:N_PROFILES]]
                for v in PROFILE_VARIANTS}
    long_enough = [(s, p) for s, p in picked if _seconds(p) >= SPLIT_S + 0.5 + SHORT_S][:N_QUERY_SPEAKERS]
    queries = {v: [(s, _variant_item(p, v, talkers, seed, True)) for s, p in long_enough] for v in QUERY_VARIANTS}
    return {"profiles": profiles, "queries": queries}


def _seconds(path: str) -> float:
    import soundfile

    return float(soundfile.info(path).duration)


class _CohortWithout:
    """The artifact, its S-norm cohort without some rows (everything else delegated)."""

    def __init__(self, artifact, drop: np.ndarray):
        keep = np.setdiff1d(np.arange(len(artifact.params["cohort_runtime"])), drop)
        self._artifact = artifact
        self.params = {**artifact.params, "cohort_enroll": artifact.params["cohort_enroll"][keep],
                       "cohort_runtime": artifact.params["cohort_runtime"][keep]}

    def __getattr__(self, name):
        return getattr(self._artifact, name)


def training_scorer(artifact, whole_runtime: np.ndarray) -> tuple[CandidateScorer, dict]:
    """A scorer whose cohort leaves out the rows of the training speakers (the nearest cohort
    row by runtime cosine to each clean part of their utterance), and how clear the matches were."""
    cohort = artifact.params["cohort_runtime"]
    cosine = (whole_runtime / np.linalg.norm(whole_runtime, axis=1, keepdims=True)) @ (
        cohort / np.linalg.norm(cohort, axis=1, keepdims=True)).T
    drop = np.argmax(cosine, axis=1)
    ordered = np.sort(cosine, axis=1)
    info = {"dropped": int(len(np.unique(drop))), "match_cosine_min": round(float(ordered[:, -1].min()), 3),
            "runner_up_cosine_max": round(float(ordered[:, -2].max()), 3)}
    return CandidateScorer(_CohortWithout(artifact, np.unique(drop))), info


# ----------------------------------------------------------------------------- quality cache
def _quality_key(item: Item) -> str:
    files = [[str(pathlib.Path(p).resolve()), os.stat(p).st_size] for p in item.sources]
    identity = {"estimator": ESTIMATOR_VERSION, "files": files, "treatment": item.treatment,
                "frame": quality.FRAME, "hop": quality.HOP, "hf_cut": quality.HF_CUT_HZ}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def item_quality(items, embedder: ShiftEmbedder, cache_dir) -> dict:
    """item -> {"snr_db", "hf_db"} of the audio as received (cached as JSON under ``cache_dir``)."""
    folder = pathlib.Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for item in items:
        path = folder / f"{_quality_key(item)}.json"
        if path.exists():
            out[item] = json.loads(path.read_text())
            continue
        out[item] = quality.estimate(embedder.audio(item))
        path.write_text(json.dumps(out[item]))
    return out


# ----------------------------------------------------------------------------- training trials
def training_trials(scorer, data: dict, profile_embedder, query_embedder, quality_of: dict) -> dict:
    """path -> {"llr", "is_target", "profile_q", "query_q", "combo"} over every combo's trials."""
    out = {path: {"llr": [], "is_target": [], "profile_q": [], "query_q": [], "combo": []} for path in PATHS}
    for p_variant, q_variant in COMBOS:
        profiles, queries = data["profiles"][p_variant], data["queries"][q_variant]
        pv, qv = profile_embedder.vectors, query_embedder.vectors
        enroll = mean_vectors([np.stack([pv[i][0] for i in items]) for _, items in profiles])
        runtime = mean_vectors([np.stack([pv[i][1] for i in items]) for _, items in profiles])
        tests_r = np.stack([qv[item][1] for _, item in queries])
        seconds = np.array([qv[item][2] for _, item in queries])
        p_q = np.array([quality.profile_quality([quality_of[i] for i in items], [pv[i][2] for i in items])
                        for _, items in profiles])
        q_q = np.array([(quality_of[item]["snr_db"], quality_of[item]["hf_db"], qv[item][2]) for _, item in queries])
        target = np.array([[qs == ps for ps, _ in profiles] for qs, _ in queries])
        for path in PATHS:
            llr, _ = scorer.score_candidates(tests_r, enroll, runtime if path == "fused" else None,
                                                      seconds=seconds)
            rec = out[path]
            rec["llr"].append(llr.ravel())
            rec["is_target"].append(target.ravel())
            rec["profile_q"].append(np.repeat(p_q[None], len(queries), axis=0).reshape(-1, 3))
            rec["query_q"].append(np.repeat(q_q, len(profiles), axis=0))
            rec["combo"] += [f"{p_variant}|{q_variant}"] * llr.size
    return {path: {k: np.concatenate(v) if k != "combo" else np.array(v) for k, v in rec.items()}
            for path, rec in out.items()}


def method_context(artifact, enroll_model, runtime_model, shared_dir, cache_dir, conditions, embedder,
                   seed: int = 0, progress: bool = True) -> dict:
    """What ``shift_quality.adjust`` needs: every evaluation item's quality, and the maps
    (per kind, duration on / off and path) fitted on the training trials."""
    data = training_set(shared_dir, seed)
    profile_embedder = CropEmbedder(enroll_model, runtime_model, cache_dir, progress=progress)
    query_embedder = CropEmbedder(runtime_model, runtime_model, cache_dir, progress=progress)
    profile_items = [i for v in data["profiles"].values() for _, items in v for i in items]
    query_items = [item for v in data["queries"].values() for _, item in v]
    profile_embedder.embed(profile_items)
    query_embedder.embed(query_items)
    quality_dir = pathlib.Path(cache_dir).parent / "quality-suspect" / "quality"
    quality_of = item_quality(profile_items + query_items, profile_embedder, quality_dir)
    clean_parts = [items[0] for _, items in data["profiles"]["clean"]] + [i for _, i in data["queries"]["clean"]]
    scorer, cohort_info = training_scorer(artifact, np.stack(
        [(profile_embedder.vectors.get(i) or query_embedder.vectors[i])[1] for i in clean_parts]))
    trials = training_trials(scorer, data, profile_embedder, query_embedder, quality_of)
    maps = {}
    for kind in ("shift", "refit"):
        for duration in (True, False):
            for path, rec in trials.items():
                bins = quality.trial_bins(rec["profile_q"], rec["query_q"], duration)
                maps[(kind, duration, path)] = quality.fit_bin_maps(rec["llr"], rec["is_target"], bins, kind)
    eval_items = list(dict.fromkeys(i for c in conditions for i in c.items()))
    return {"maps": maps, "trials": trials, "cohort": cohort_info,
            "item_quality": item_quality(eval_items, embedder, quality_dir)}


def training_markdown(trials: dict, cohort: dict) -> str:
    """Per path and training combo (profile variant | query variant): the mean genuine and
    impostor LLRs (shipped scoring, training cohort) and the trial counts."""
    lines = ["| path | training combo (profile \\| query) | mean genuine LLR | mean impostor LLR (sd) | trials (tgt / non) |",
             "|---|---|---|---|---|"]
    for path, rec in trials.items():
        for combo in dict.fromkeys(rec["combo"].tolist()):
            rows = rec["combo"] == combo
            tgt, non = rec["llr"][rows & rec["is_target"]], rec["llr"][rows & ~rec["is_target"]]
            lines.append(f"| {path} | {combo} | {np.mean(tgt):.2f} | {np.mean(non):.2f} ({np.std(non):.2f}) | "
                         f"{len(tgt)} / {len(non)} |")
    return "\n".join(lines + ["", f"Training cohort: {cohort}"])
