"""The domain-shift evaluation (``nessa eval-shift``): embed every item of the conditions
built by ``shift_protocol`` (audio -> channel -> Silero VAD speech only -> both models,
cached per model and item under the embedding cache), score each condition's trials with an
artifact exactly as the service's verify does (``artifact.scorer.score_candidates``: the
fused path for profiles with a runtime vector, the alignment-only path without), and report
per condition, path and half: EER and the measured false-accept / false-reject rates at the
artifact's operating thresholds (its stored ``far_0.1pct``, the service's default, and
``far_1pct``), with the trial counts.

Besides the service's two paths (``PATHS``), the light model alone is reported
(``RUNTIME_PATHS``): the GE2E cosine of the query against the profile's runtime vector,
S-normalised against the artifact's stored cohort as its fused score normalises that feature
(``runtime``), and raw (``runtime-raw``, ``nessa eval``'s ``runtime_sym``). Neither has a
calibrated LLR (the artifact stores fused and cross-model calibrations only), so those rows
have an EER and no FAR / FRR. ``eer_ratios`` sets each path's EER on the same-words trials
against its EER on the different-words trials of the same speakers (issue #12's bound: 2x)."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Callable

import numpy as np

from nessa import metrics
from nessa.calibration import FAR_TARGETS
from nessa.lab.data import EmbeddingCache, default_audio_loader
from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation.shift_protocol import HALVES, Item, ShiftCondition
from nessa.lab.evaluation.systems import mean_vectors

PATHS = ("fused", "alignment")
#: the light model alone (EER only: no calibrated runtime-only LLR exists). Kept out of
#: ``PATHS``, which ``shift_methods`` loops over with the service's calibrations
RUNTIME_PATHS = ("runtime", "runtime-raw")
REPORTED_PATHS = PATHS + RUNTIME_PATHS
#: (condition, its reference condition): same speakers and genuine trials, other impostors
EER_RATIOS = (("same-words", "speech-commands"),)
#: the issue's bound on each ratio
RATIO_BOUND = 2.0
#: the thresholds reported: (label, threshold name in the calibration, FAR it targets)
THRESHOLDS = tuple((name, name, far) for name, far in sorted(FAR_TARGETS.items(), key=lambda kv: kv[1]))


class ShiftEmbedder:
    """Both models' embeddings of ``Item``s, with the speech seconds Silero VAD kept."""

    def __init__(self, enroll_embedder, runtime_embedder, cache_dir, *, progress: bool = True,
                 load_audio: Callable[[str], np.ndarray] | None = None):
        if enroll_embedder.sample_rate != runtime_embedder.sample_rate:
            raise ValueError("the two models disagree on the sample rate")
        self.models = (enroll_embedder, runtime_embedder)
        self.caches = [EmbeddingCache(cache_dir, model) for model in self.models]
        self.progress = progress
        self._load = load_audio or default_audio_loader()
        self._raw: dict[str, np.ndarray] = {}
        self._vad = None
        self.vectors: dict[Item, tuple[np.ndarray, np.ndarray, float]] = {}

    def raw(self, path: str) -> np.ndarray:
        if path not in self._raw:
            self._raw[path] = np.asarray(self._load(path), dtype=np.float32)
        return self._raw[path]

    def audio(self, item: Item) -> np.ndarray:
        """The item's audio as the service would receive it (before VAD)."""
        wav = np.concatenate([self.raw(path) for path in item.sources])
        spec = json.loads(item.treatment)
        kind = spec["kind"]
        if kind == "clean":
            return wav
        if kind == "telephone":
            return channels.telephone(wav)
        if kind == "babble":
            return channels.add_babble(wav, [self.raw(p) for p in spec["talkers"]], spec["snr_db"], spec["seed"])
        if kind == "reverb":
            return channels.reverberate(wav, channels.synthetic_rir(spec["rt60"], spec["seed"], drr_db=spec["drr_db"]))
        raise ValueError(f"unknown treatment {kind!r}")

    def _detector(self):
        if self._vad is None:
            from speechcore.vad import SileroVAD

            self._vad = SileroVAD()
        return self._vad

    def _speech(self, item: Item) -> np.ndarray:
        wav = self.audio(item)
        speech = self._detector().speech_only(wav)[0]
        return speech if len(speech) else wav  # no speech found: keep it all (as nessa eval does)

    def _key(self, cache: EmbeddingCache, item: Item) -> str:
        files = []
        for path in item.sources + tuple(json.loads(item.treatment).get("talkers", [])):
            stat = os.stat(path)
            files.append([str(pathlib.Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
        model = cache.embedder
        identity = {"shift_item": 1, "files": files, "treatment": item.treatment, "vad": self._detector().identity(),
                    "sample_rate": model.sample_rate, "version": model.version,
                    "weights_sha256": model.weights_sha256}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    def embed(self, items: list[Item]) -> None:
        """Embed (or load from the cache) every item not yet in ``vectors``."""
        from tqdm import tqdm

        for item in tqdm([i for i in items if i not in self.vectors], desc="embedding", unit="item",
                         disable=not self.progress):
            found, speech = [], None
            for model, cache in zip(self.models, self.caches):
                key = self._key(cache, item)
                entry = cache.load(key)
                if entry is None or entry[2].shape != (1, model.dim):
                    if speech is None:
                        speech = self._speech(item)
                    vector = np.asarray(model.embed([speech]), dtype=np.float32)
                    cache.store(key, len(speech), np.array([[0, len(speech)]], dtype=np.int64), vector)
                    entry = (len(speech), None, vector)
                found.append((entry[2][0], entry[0] / model.sample_rate))
            self.vectors[item] = (found[0][0], found[1][0], found[1][1])


def score_condition(artifact, condition: ShiftCondition, vectors: dict) -> dict[str, np.ndarray]:
    """path -> (n_trials,) LLRs of the condition's trials, scored as verify scores them."""
    profiles_e = mean_vectors([np.stack([vectors[i][0] for i in items]) for _, items in condition.profiles])
    profiles_r = mean_vectors([np.stack([vectors[i][1] for i in items]) for _, items in condition.profiles])
    tests_r = np.stack([vectors[item][1] for _, item in condition.tests])
    seconds = np.array([vectors[item][2] for _, item in condition.tests])
    out = {}
    for path in PATHS:
        llr, fused = artifact.scorer.score_candidates(tests_r, profiles_e, profiles_r if path == "fused" else None,
                                                      seconds=seconds)
        if bool(fused.all()) != (path == "fused"):
            raise AssertionError(f"scored on the wrong path: expected {path}")
        out[path] = llr[condition.trials[:, 0], condition.trials[:, 1]]
    out.update(runtime_scores(artifact, condition, tests_r, profiles_e, profiles_r))
    return out


def runtime_scores(artifact, condition: ShiftCondition, tests_r: np.ndarray, profiles_e: np.ndarray,
                   profiles_r: np.ndarray) -> dict[str, np.ndarray]:
    """The light model alone per trial: ``runtime`` = the GE2E cosine S-normalised as the
    artifact's fused score normalises it (raw where the artifact does not), ``runtime-raw``."""
    rows, cols = condition.trials[:, 0], condition.trials[:, 1]
    features = artifact.scorer.candidate_features(tests_r, profiles_e, profiles_r)
    raw = unit_rows(tests_r) @ unit_rows(profiles_r).T
    return {"runtime": features["runtime_cosine"][rows, cols], "runtime-raw": raw[rows, cols]}


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def operating_thresholds(artifact, fused: bool) -> dict[str, float]:
    """threshold name -> LLR threshold (the artifact's stored ones; where one is missing, the
    Bayes threshold log((1 - p) / p) for a prior p equal to the targeted FAR)."""
    out = {}
    for name, _, far in THRESHOLDS:
        try:
            out[name] = artifact.scorer.candidate_threshold(fused=fused, name=name)
        except KeyError:
            out[f"{name} (Bayes)"] = float(np.log((1.0 - far) / far))
    return out


def figures(targets: np.ndarray, nontargets: np.ndarray, thresholds: dict[str, float]) -> dict:
    """EER (%), and FAR / FRR (%) at each threshold (accept when llr >= threshold)."""
    row = {"n_target": int(len(targets)), "n_nontarget": int(len(nontargets)),
           "eer": 100.0 * metrics.equal_error_rate(targets, nontargets)[0] if len(targets) and len(nontargets)
           else float("nan")}
    for name, threshold in thresholds.items():
        row[f"far@{name}"] = 100.0 * float(np.mean(nontargets >= threshold)) if len(nontargets) else float("nan")
        row[f"frr@{name}"] = 100.0 * float(np.mean(targets < threshold)) if len(targets) else float("nan")
        row[f"fa@{name}"] = int(np.sum(nontargets >= threshold))
    return row


def evaluate_shift(conditions: list[ShiftCondition], artifact, embedder: ShiftEmbedder,
                   min_seconds: tuple[float, float] = (0.0, 0.0)) -> tuple[list[dict], dict]:
    """(rows: one per condition x path x half, info: speech seconds, thresholds). Every
    trial is scored; ``min_seconds`` (enrollment, query) are the service's speech minimums,
    and info counts the items under them (the service would refuse those requests)."""
    rows, info = [], {"artifact": artifact.name, "artifact_sha256": artifact.sha256, "thresholds": {},
                      "speech_seconds": {}}
    for path in PATHS:
        info["thresholds"][path] = operating_thresholds(artifact, path == "fused")
    for path in RUNTIME_PATHS:
        info["thresholds"][path] = {}  # no calibrated runtime-only LLR: EER only
    for condition in conditions:
        embedder.embed(condition.items())
        llrs = score_condition(artifact, condition, embedder.vectors)
        test_seconds = [embedder.vectors[item][2] for _, item in condition.tests]
        profile_seconds = [sum(embedder.vectors[i][2] for i in items) for _, items in condition.profiles]
        enrolled = {i for _, items in condition.profiles for i in items}
        info["speech_seconds"][condition.name] = {
            "test_median": round(float(np.median(test_seconds)), 2),
            "profile_median": round(float(np.median(profile_seconds)), 2),
            "tests_under_min": int(sum(s < min_seconds[1] for s in test_seconds)), "tests": len(test_seconds),
            "enrollments_under_min": int(sum(embedder.vectors[i][2] < min_seconds[0] for i in enrolled)),
            "enrollments": len(enrolled)}
        for path in REPORTED_PATHS:
            for half in HALVES:
                mask = condition.half == half
                scores, target = llrs[path][mask], condition.is_target[mask]
                rows.append({"condition": condition.name, "path": path, "half": half,
                             **figures(scores[target], scores[~target], info["thresholds"][path])})
    info["eer_ratios"] = eer_ratios(rows)
    return rows, info


def eer_ratios(rows: list[dict]) -> list[dict]:
    """Per ``EER_RATIOS`` pair, path and half present in ``rows``: both EERs, their ratio, whether
    it is within ``RATIO_BOUND``, and (fused rows) whether fused is no worse than ``runtime``."""
    by_key = {(r["condition"], r["path"], r["half"]): r["eer"] for r in rows}
    out = []
    for condition, reference in EER_RATIOS:
        for path, half in dict.fromkeys((r["path"], r["half"]) for r in rows if r["condition"] == condition):
            if (reference, path, half) not in by_key:
                continue
            eer, ref = by_key[(condition, path, half)], by_key[(reference, path, half)]
            ratio = eer / ref if ref > 0 else (1.0 if eer == 0 else float("inf"))
            row = {"condition": condition, "reference": reference, "path": path, "half": half, "eer": eer,
                   "reference_eer": ref, "ratio": ratio, "within_bound": bool(ratio <= RATIO_BOUND)}
            if path == "fused" and (condition, "runtime", half) in by_key:
                row["runtime_eer"] = by_key[(condition, "runtime", half)]
                row["fused_no_worse_than_runtime"] = bool(eer <= row["runtime_eer"])
            out.append(row)
    return out


_NAN = float("nan")


def _cell(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"


def markdown(rows: list[dict], info: dict) -> str:
    """One table: a row per condition and path, dev and test columns side by side; then the
    EER ratios."""
    names = list(info["thresholds"]["fused"])
    by_key = {(r["condition"], r["path"], r["half"]): r for r in rows}
    header = ["condition", "path"]
    for half in HALVES:
        header += [f"{half} EER"] + [f"{half} FAR / FRR @{n}" for n in names] + [f"{half} trials (tgt / non)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paths = [p for p in REPORTED_PATHS if any(r["path"] == p for r in rows)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        for path in paths:
            cells = [condition, path]
            for half in HALVES:
                r = by_key[(condition, path, half)]
                cells.append(_cell(r["eer"]))
                cells += [f"{_cell(r.get(f'far@{n}', _NAN))} / {_cell(r.get(f'frr@{n}', _NAN))}" for n in names]
                cells.append(f"{r['n_target']} / {r['n_nontarget']}")
            lines.append("| " + " | ".join(cells) + " |")
    thresholds = "; ".join(f"{path}: " + ", ".join(f"{n} = {v:.3f}" for n, v in info["thresholds"][path].items())
                           for path in PATHS)
    notes = ["", f"LLR thresholds ({info['artifact']}): {thresholds}. Rates in %. runtime / runtime-raw: the light "
             "model alone (GE2E cosine, S-normalised / raw); no calibrated LLR, so no FAR / FRR."]
    return "\n".join(lines + notes + ratio_markdown(info.get("eer_ratios") or eer_ratios(rows)))


def ratio_markdown(ratios: list[dict]) -> list[str]:
    """The EER-ratio table's lines (empty without ratios)."""
    if not ratios:
        return []
    lines = ["", f"| condition / reference | path | half | EER | reference EER | ratio (bound {RATIO_BOUND:g}x) "
                 "| fused <= runtime |", "|---|---|---|---|---|---|---|"]
    for r in ratios:
        check = "" if "runtime_eer" not in r else (
            f"{'yes' if r['fused_no_worse_than_runtime'] else 'NO'} ({_cell(r['runtime_eer'])})")
        lines.append(f"| {r['condition']} / {r['reference']} | {r['path']} | {r['half']} | {_cell(r['eer'])} | "
                     f"{_cell(r['reference_eer'])} | {r['ratio']:.2f}{'' if r['within_bound'] else ' (over)'} | "
                     f"{check} |")
    return lines
