"""`nessa eval`: one run, every system, every condition, one table per protocol.

What is compared (all in the same run, on the same trials):

* ``enroll_sym``   the enrollment model on both sides (the ceiling);
* ``runtime_sym``  the runtime model on both sides (what the light model manages alone);
* ``anchor_logit`` the anchor baseline: each side is represented by its cosine scores
  against a fixed set of anchor speakers (each model scores the anchors with its own
  embeddings of their utterances); the score vectors are mean-centred (each by its own
  mean, so the cosine between them is a Pearson correlation) and compared by cosine;
* ``ridge``, ``cca`` linear alignments fitted in-run with ``nessa.lab.linear`` on the anchor
  corpus' paired chunk embeddings (the data and chunking of the shipped alignment; the
  regularisation is chosen on a held-out speaker split exactly as ``nessa.lab.train`` does,
  then refitted on every speaker); cross-model score only;
* ``<artifact>``, ``<artifact>+fused`` every artifact given, scored as the service scores
  it (``AlignmentArtifact.scorer``): profiles without a runtime vector (the calibrated
  cross-model score) and with one (its fusion with the symmetric runtime cosine); both
  have a decision threshold;
* any extra ``System`` passed in, e.g. a speaker-adapted one built with
  ``adapted_system`` (the hook for systems that learn from a profile's own utterances).

Asymmetric systems only ever see enrollment-model embeddings of the enrollment side and
runtime-model embeddings of the test side.

Conditions: the test side at full length and as crops of the speech (after Silero VAD)
at a seeded random offset, optionally with additive white or babble noise at a given SNR
(the enrollment side always stays clean and full length). Protocols:

* ``all_pairs``  every ordered pair (enrollment utterance, full & clean) x (another test
  utterance at the condition), target and non-target;
* ``profile``    per speaker a profile = mean of ``n_enroll`` (3) randomly drawn
  utterances; every utterance not drawn for a profile is tested against every profile;
  repeated over ``draws`` seeded draws, reported as mean +- sd; also top-1 open-set
  identification (best profile is the true speaker; and, for systems with a threshold,
  best profile is the true speaker *and* reaches the threshold).

Metrics: EER and minDCF (p_target 0.01, normalised by p_target) by speechbrain via
``nessa.metrics``; the fraction of the gap recovered,
``(EER_runtime_sym - EER_x) / (EER_runtime_sym - EER_enroll_sym)``, only where that gap
is at least ``MIN_GAIN_GAP_POINTS`` EER points.

Embedders are passed in (nessa/ never imports the service or the model packages). Every
utterance and crop is embedded once per model and cached (``nessa.lab.data.EmbeddingCache``,
keyed by model version + weights sha256 + file + crop/noise spec). Audio can be bypassed
with an ``EmbeddingProvider`` (the tests use synthetic embeddings).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import statistics
import time
from typing import Callable, Protocol, Sequence

import numpy as np

from nessa import metrics
from nessa.artifact import AlignmentArtifact, ArtifactError
from nessa.kinds import KINDS
from nessa.lab.data import (ROLE_FULL, FileEmbeddings, default_audio_loader, embed_corpus, embed_segments,
                        list_utterances, EmbeddingCache)
from nessa.lab.linear import RidgeSolver, fit_cca
from nessa.lab.train import AlignmentConfig, build_dev_trials, cross_scores, regression_pairs, split_speakers
from speechcore.embedder import l2_normalise

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "artifacts"
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_EVAL_DIR = DEFAULT_SHARED_DATA / "librispeech" / "test-other"
DEFAULT_ANCHORS_DIR = DEFAULT_SHARED_DATA / "librispeech" / "train-clean-100"
DEFAULT_CACHE_DIR = REPO_ROOT / "var" / "cache" / "embeddings"
DEFAULT_CROPS = (2.0, 1.0)
DEFAULT_DRAWS = 5
DEFAULT_ENROLL_UTTERANCES = 3
P_TARGET = metrics.DEFAULT_P_TARGET
#: gain recovered is reported only where runtime_sym - enroll_sym >= this many EER points
MIN_GAIN_GAP_POINTS = 0.5
#: babble = this many other utterances (other speakers) summed
BABBLE_TALKERS = 5
#: the in-run alignments use the shipped alignment's chunk plan (seed 0) so the cache hits
TRAIN_CHUNK_SEED = 0

PROTOCOLS = ("all_pairs", "profile")
ENROLL_SYM, RUNTIME_SYM = "enroll_sym", "runtime_sym"
ROW_KEYS = ("system", "condition", "protocol", "eer", "min_dcf", "eer_sd", "top1", "gain_recovered",
            "n_target", "n_nontarget")


# ============================================================================ conditions
@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    kind: str  # "white" or "babble"
    snr_db: float

    def __post_init__(self):
        if self.kind not in ("white", "babble"):
            raise ValueError(f"noise kind must be 'white' or 'babble', got {self.kind!r}")

    @property
    def tag(self) -> str:
        return f"{self.kind}{self.snr_db:g}dB"


@dataclasses.dataclass(frozen=True)
class Condition:
    """How the test side is presented: full length or a crop (seconds), clean or noisy."""

    crop_seconds: float | None = None
    noise: NoiseSpec | None = None

    @property
    def name(self) -> str:
        base = "full" if self.crop_seconds is None else f"{self.crop_seconds:g}s"
        return base if self.noise is None else f"{base}+{self.noise.tag}"


def make_conditions(crops: Sequence[float], noise: NoiseSpec | None) -> list[Condition]:
    lengths = [None] + sorted({float(c) for c in crops}, reverse=True)
    return [Condition(length, noise) for length in lengths]


# ============================================================================ embeddings
@dataclasses.dataclass
class EvalEmbeddings:
    """Both models' embeddings of the evaluation corpus.

    ``enroll_full`` / ``runtime_full``: (n, d) clean full-length embeddings (the enrollment
    side); ``tests[condition name] = (enrollment-model (n, d_e), runtime-model (n, d_r))``.
    Rows are utterances, in the order of ``speakers`` / ``names``.
    """

    speakers: np.ndarray
    names: list[str]
    enroll_full: np.ndarray
    runtime_full: np.ndarray
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    #: optional: condition name -> (n,) speech seconds of each test segment (for scorers
    #: whose calibration depends on the query's duration)
    test_seconds: dict[str, np.ndarray] | None = None


class EmbeddingProvider(Protocol):
    """Where embeddings come from (audio + models, or synthetic in tests)."""

    def evaluation_set(self, conditions: Sequence[Condition]) -> EvalEmbeddings: ...

    def anchor_files(self) -> list[FileEmbeddings]:
        """The anchor / alignment-training corpus, chunked as nessa.lab.train chunks it."""
        ...


def _crop_rng(seed: int, speaker: str, path: str, seconds: float) -> np.random.Generator:
    identity = hashlib.sha256(f"{speaker}/{pathlib.Path(path).name}/{seconds:g}".encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(identity[:8], "little")])


def crop_bounds(n_samples: int, sample_rate: int, crops: Sequence[float], seed: int, speaker: str,
                path: str) -> np.ndarray:
    """(1 + len(crops), 2) sample bounds: the whole speech, then one seeded crop per length
    (the whole speech when it is shorter than the crop)."""
    bounds = [(0, n_samples)]
    for seconds in crops:
        window = int(round(seconds * sample_rate))
        if window >= n_samples:
            bounds.append((0, n_samples))
            continue
        offset = int(_crop_rng(seed, speaker, path, seconds).integers(0, n_samples - window + 1))
        bounds.append((offset, offset + window))
    return np.asarray(bounds, dtype=np.int64)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with g chosen so that 10 log10(P_speech / P_noise) = snr_db."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)[:len(speech)]
    p_speech, p_noise = np.mean(speech ** 2), np.mean(noise ** 2)
    if p_speech <= 0 or p_noise <= 0:
        return speech.astype(np.float32)
    gain = math.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)


class AudioEmbeddingProvider:
    """Real audio: decode -> Silero VAD speech only -> crops (+ noise) -> both models, cached."""

    def __init__(self, enroll_embedder, runtime_embedder, eval_dir, *, anchors_dir, cache_dir, crops, seed: int,
                 batch_size: int = 32, progress: bool = True, load_audio: Callable[[str], np.ndarray] | None = None):
        if enroll_embedder.sample_rate != runtime_embedder.sample_rate:
            raise ValueError("the two models disagree on the sample rate")
        self.enroll, self.runtime = enroll_embedder, runtime_embedder
        self.eval_dir, self.anchors_dir = eval_dir, anchors_dir
        self.cache_dir = pathlib.Path(cache_dir)
        self.crops = tuple(float(c) for c in crops)
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self._load = load_audio or default_audio_loader()
        self._vad = None
        self._speech: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ audio
    def _speech_only(self, path: str) -> np.ndarray:
        if path not in self._speech:
            if self._vad is None:
                from speechcore.vad import SileroVAD

                self._vad = SileroVAD()
            wav = np.asarray(self._load(path), dtype=np.float32)
            speech = self._vad.speech_only(wav)[0]
            self._speech[path] = speech if len(speech) else wav  # no speech found: keep it all
        return self._speech[path]

    def _noise_for(self, index: int, utterances, noise: NoiseSpec, n_samples: int) -> np.ndarray:
        speaker, path = utterances[index]
        rng = np.random.default_rng([self.seed, 7919, index])
        if noise.kind == "white":
            return rng.standard_normal(n_samples)
        others = [i for i, (spk, _) in enumerate(utterances) if spk != speaker]
        picked = rng.choice(others, size=min(BABBLE_TALKERS, len(others)), replace=False)
        babble = np.zeros(n_samples)
        for other in picked:
            talker = self._speech_only(utterances[other][1]).astype(np.float64)
            if len(talker) == 0:
                continue
            talker = np.tile(talker, n_samples // len(talker) + 2)
            start = int(rng.integers(0, len(talker) - n_samples))
            piece = talker[start:start + n_samples]
            babble += piece / max(np.sqrt(np.mean(piece ** 2)), 1e-9)  # equal-level talkers
        return babble

    # ------------------------------------------------------------------ cache
    def _key(self, cache: EmbeddingCache, speaker: str, path: str, segment: dict, audio: dict) -> str:
        """One cache entry per (model, file, segment, audio treatment): the full speech is
        shared by every seed and crop list; a crop is keyed by its length and the seed."""
        stat = os.stat(path)
        model = cache.embedder
        identity = {"evaluation_segment": 1, "path": str(pathlib.Path(path).resolve()), "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "speaker": speaker, "segment": segment, "audio": audio,
                    "sample_rate": model.sample_rate, "version": model.version,
                    "weights_sha256": model.weights_sha256}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    def _embed_all(self, utterances, noise: NoiseSpec | None, corpus_sha: str) -> list[np.ndarray]:
        """Per model, (n_files, 1 + len(crops), dim): full speech then each crop."""
        from tqdm import tqdm

        models = (self.enroll, self.runtime)
        caches = [EmbeddingCache(self.cache_dir, model) for model in models]
        audio = {"vad": "silero_speech_only", "noise": None if noise is None else
                 {"kind": noise.kind, "snr_db": noise.snr_db, "seed": self.seed,
                  "corpus": corpus_sha if noise.kind == "babble" else ""}}
        segments = [{"crop": None}] + [{"crop": seconds, "seed": self.seed} for seconds in self.crops]
        out = [np.zeros((len(utterances), len(segments), model.dim), dtype=np.float32) for model in models]
        self._seconds = np.zeros((len(utterances), len(segments)))
        label = "embedding test set" + ("" if noise is None else f" ({noise.tag})")
        for index, (speaker, path) in enumerate(tqdm(utterances, desc=label, unit="file", disable=not self.progress)):
            speech = None
            for m, (model, cache) in enumerate(zip(models, caches)):
                keys = [self._key(cache, speaker, path, segment, audio) for segment in segments]
                missing = []
                for column, key in enumerate(keys):
                    entry = cache.load(key)
                    if entry is not None and entry[2].shape == (1, model.dim):
                        out[m][index, column] = entry[2][0]
                        self._seconds[index, column] = (entry[1][0, 1] - entry[1][0, 0]) / model.sample_rate
                    else:
                        missing.append(column)
                if not missing:
                    continue
                if speech is None:
                    speech = self._speech_only(path)
                    bounds = crop_bounds(len(speech), model.sample_rate, self.crops, self.seed, speaker, path)
                    if noise is not None:
                        speech = add_noise(speech, self._noise_for(index, utterances, noise, len(speech)),
                                           noise.snr_db)
                vectors = embed_segments(model, speech, bounds[missing], self.batch_size)
                for row, column in enumerate(missing):
                    cache.store(keys[column], len(speech), bounds[column:column + 1], vectors[row:row + 1])
                    out[m][index, column] = vectors[row]
                    self._seconds[index, column] = (bounds[column, 1] - bounds[column, 0]) / model.sample_rate
        return out

    def evaluation_set(self, conditions: Sequence[Condition]) -> EvalEmbeddings:
        utterances = list_utterances(self.eval_dir)
        corpus_sha = hashlib.sha256("\n".join(f"{s}/{pathlib.Path(p).name}" for s, p in utterances)
                                    .encode("utf-8")).hexdigest()
        clean_e, clean_r = self._embed_all(utterances, None, corpus_sha)
        seconds = self._seconds
        by_noise = {None: (clean_e, clean_r)}
        tests, test_seconds = {}, {}
        for condition in conditions:
            if condition.crop_seconds is not None and condition.crop_seconds not in self.crops:
                raise ValueError(f"condition {condition.name}: crop not among {self.crops}")
            if condition.noise not in by_noise:
                by_noise[condition.noise] = self._embed_all(utterances, condition.noise, corpus_sha)
            e, r = by_noise[condition.noise]
            column = 0 if condition.crop_seconds is None else 1 + self.crops.index(condition.crop_seconds)
            tests[condition.name] = (e[:, column], r[:, column])
            test_seconds[condition.name] = seconds[:, column].copy()
        return EvalEmbeddings(speakers=np.asarray([s for s, _ in utterances]),
                              names=[f"{s}/{pathlib.Path(p).name}" for s, p in utterances],
                              enroll_full=clean_e[:, 0], runtime_full=clean_r[:, 0], tests=tests,
                              test_seconds=test_seconds)

    def anchor_files(self) -> list[FileEmbeddings]:
        from nessa.lab.data import speech_only_loader

        config = AlignmentConfig()  # the shipped alignment's chunking
        return embed_corpus(list_utterances(self.anchors_dir), self.runtime, self.enroll,
                            config.chunk_spec(TRAIN_CHUNK_SEED), cache_dir=self.cache_dir,
                            load_audio=speech_only_loader(self._load), audio_tag="speech_only",
                            batch_size=config.batch_size, progress=self.progress)


# ============================================================================ systems
#: (test-side enrollment-model embeddings (N, d_e), test-side runtime-model embeddings
#: (N, d_r)) -> (N, M) scores against the M enrolled entities. Asymmetric systems must
#: only use the second argument.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class System:
    """A scoring system. ``build(enroll_groups, runtime_groups)`` gets, per enrolled entity
    (an utterance, or a profile's utterances), the (k, d) embeddings of its enrollment
    utterances by each model and returns a ``Scorer``. ``threshold``: the system's own
    accept threshold on its score (accept when ``score >= threshold``), if it has one."""

    name: str
    build: Callable[[list[np.ndarray], list[np.ndarray]], Scorer]
    threshold: float | None = None
    asymmetric: bool = True
    #: protocols the system may be run under (a gallery-adapted system learns from every
    #: enrolled utterance, which in all_pairs includes the test utterances: profile only)
    protocols: tuple = PROTOCOLS


def _mean_vectors(groups: list[np.ndarray]) -> np.ndarray:
    return l2_normalise(np.stack([np.asarray(g, dtype=np.float32).mean(axis=0) for g in groups]))


def symmetric_system(name: str, use_enroll_model: bool) -> System:
    def build(enroll_groups, runtime_groups):
        profiles = _mean_vectors(enroll_groups if use_enroll_model else runtime_groups)
        if use_enroll_model:
            return lambda test_e, test_r: l2_normalise(test_e) @ profiles.T
        return lambda test_e, test_r: l2_normalise(test_r) @ profiles.T

    return System(name, build, asymmetric=False)


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return l2_normalise(a) @ l2_normalise(b).T


def anchor_logit_system(anchor_enroll: np.ndarray, anchor_runtime: np.ndarray, name: str = "anchor_logit") -> System:
    """The anchor baseline: each side as its vector of cosines against the anchor speakers
    (enrollment side with the enrollment model's anchor embeddings, test side with the
    runtime model's), mean-centred, compared by cosine."""
    anchors_e, anchors_r = l2_normalise(anchor_enroll), l2_normalise(anchor_runtime)

    def build(enroll_groups, runtime_groups):
        profile_scores = _mean_vectors(enroll_groups) @ anchors_e.T
        return lambda test_e, test_r: _centred_cosine(l2_normalise(test_r) @ anchors_r.T, profile_scores)

    return System(name, build)


def map_system(name: str, kind: str, params: dict) -> System:
    """Cross-model cosine through a KINDS transform (an in-run ridge / cca fit)."""
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}

    def build(enroll_groups, runtime_groups):
        profiles = l2_normalise(KINDS[kind].transform_target(params, _mean_vectors(enroll_groups).astype(np.float64)))
        return lambda test_e, test_r: l2_normalise(
            KINDS[kind].transform_source(params, l2_normalise(test_r).astype(np.float64))) @ profiles.T

    return System(name, build)


class SecondsScorer:
    """A scorer that also takes the test segments' speech durations (``seconds``, (N,) or None)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, test_e, test_r, seconds=None):
        return self.fn(test_e, test_r, seconds)


def _score(scorer, test_e, test_r, seconds):
    return scorer(test_e, test_r, seconds) if isinstance(scorer, SecondsScorer) else scorer(test_e, test_r)


def artifact_systems(artifact: AlignmentArtifact) -> list[System]:
    """``<name>``: profiles without a runtime vector (calibrated cross-model LLR);
    ``<name>+fused``: profiles with one (runtime + cross fusion LLR). Scored as the service
    scores them, through ``score_candidates`` (with S-norm against the stored cohort and
    duration bands where the artifact's ``scoring`` has them) with the test segments'
    durations."""
    scorer = artifact.scorer

    def build(fused: bool):
        def builder(enroll_groups, runtime_groups):
            profiles_e = _mean_vectors(enroll_groups)
            profiles_r = _mean_vectors(runtime_groups) if fused else None
            return SecondsScorer(lambda test_e, test_r, seconds: scorer.score_candidates(
                test_r, profiles_e, profiles_r, seconds=seconds)[0])
        return builder

    def threshold(fused: bool) -> float | None:
        try:
            return scorer.candidate_threshold(fused=fused)
        except (KeyError, ValueError):
            return None

    return [System(artifact.name, build(False), threshold(False)),
            System(f"{artifact.name}+fused", build(True), threshold(True))]


def adapted_system(name: str, adapt: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]],
                   threshold: float | None = None) -> System:
    """Hook for speaker-adapted systems.

    ``adapt(enroll_embeddings (k, d_e), runtime_embeddings (k, d_r))`` receives one enrolled
    entity's paired embeddings of its own enrollment utterances (the same k utterances by
    both models) and returns ``score(test_runtime (N, d_r)) -> (N,)``. It is called once
    per profile (once per utterance in the all-pairs protocol).
    """

    def build(enroll_groups, runtime_groups):
        scorers = [adapt(np.asarray(e), np.asarray(r)) for e, r in zip(enroll_groups, runtime_groups)]
        return lambda test_e, test_r: np.stack([np.asarray(score(test_r), dtype=np.float64).reshape(-1)
                                                for score in scorers], axis=1)

    return System(name, build, threshold)


@dataclasses.dataclass
class FittedMaps:
    ridge: dict
    cca: dict
    report: dict


def fit_in_run_maps(files: Sequence[FileEmbeddings], seed: int = TRAIN_CHUNK_SEED,
                    config: AlignmentConfig | None = None) -> FittedMaps:
    """Ridge and CCA on the anchor corpus' paired chunks, as ``nessa.lab.train`` fits them:
    hyper-parameter chosen on held-out speakers (lowest cross-model EER), refit on all."""
    config = config or AlignmentConfig()
    fit, dev = split_speakers([item.speaker for item in files], config.dev_fraction, seed)
    x_fit, y_fit = regression_pairs(files, set(fit), config.regression_target)
    x_all, y_all = regression_pairs(files, set(fit) | set(dev), config.regression_target)
    trials = build_dev_trials(files, set(dev))
    mask = trials.is_target

    def dev_eer(kind: str, params: dict) -> float:
        scores = cross_scores(kind, params, trials)
        return metrics.equal_error_rate(scores[mask], scores[~mask])[0]

    solver = RidgeSolver(x_fit, y_fit)
    ridge_table = [(dev_eer("ridge", solver.solve(a).params()), -a, a) for a in config.ridge_alphas]
    alpha = min(ridge_table)[2]
    cca_table = [(dev_eer("cca", fit_cca(x_fit, y_fit, config.cca_components, s).params()), -s, s)
                 for s in config.cca_shrinkages]
    shrinkage = min(cca_table)[2]
    report = {"ridge_relative_alpha": alpha, "cca_shrinkage": shrinkage, "cca_components": config.cca_components,
              "pairs": int(len(x_all)), "speakers": len(fit) + len(dev),
              "dev_cross_eer_percent": {"ridge": round(100 * min(ridge_table)[0], 3),
                                        "cca": round(100 * min(cca_table)[0], 3)}}
    return FittedMaps(ridge=RidgeSolver(x_all, y_all).solve(alpha).params(),
                      cca=fit_cca(x_all, y_all, config.cca_components, shrinkage).params(), report=report)


def anchor_vectors(files: Sequence[FileEmbeddings]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per anchor speaker: (enrollment-model, runtime-model) mean of its whole-utterance embeddings."""
    by_speaker: dict[str, tuple[list, list]] = {}
    for item in files:
        rows = item.plan.roles == ROLE_FULL
        if not rows.any():
            continue
        e, r = by_speaker.setdefault(item.speaker, ([], []))
        e.append(item.target[rows])
        r.append(item.source[rows])
    names = sorted(by_speaker)
    if not names:
        raise ValueError("no anchor speakers (no whole-utterance embeddings in the anchor corpus)")
    return (names, _mean_vectors([np.concatenate(by_speaker[n][0]) for n in names]),
            _mean_vectors([np.concatenate(by_speaker[n][1]) for n in names]))


# ============================================================================ protocols
@dataclasses.dataclass
class Trials:
    """Scores of one (system, condition, protocol), pooled over draws for plotting."""

    targets: list[np.ndarray]
    nontargets: list[np.ndarray]


def _groups(matrix: np.ndarray, members: list[np.ndarray]) -> list[np.ndarray]:
    return [matrix[rows] for rows in members]


def profile_draws(speakers: np.ndarray, n_enroll: int, draws: int, seed: int) -> list[list[np.ndarray]]:
    """Per draw, per speaker (sorted), the row indices of its ``n_enroll`` profile utterances."""
    names = sorted(set(speakers.tolist()))
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, 104729, draw])
        members = []
        for name in names:
            rows = np.flatnonzero(speakers == name)
            members.append(np.sort(rng.choice(rows, size=min(n_enroll, len(rows)), replace=False)))
        out.append(members)
    return out


def verification_figures(targets, nontargets) -> tuple[float, float]:
    """(EER in percent, minDCF at P_TARGET normalised by it), computed by speechbrain."""
    eer = metrics.equal_error_rate(targets, nontargets)[0]
    dcf = metrics.min_dcf(targets, nontargets, P_TARGET)[0] / min(P_TARGET, 1.0 - P_TARGET)
    return 100.0 * eer, dcf


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return float("nan"), None
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def run_all_pairs(system: System, data: EvalEmbeddings, condition: str) -> tuple[dict, Trials]:
    n = len(data.speakers)
    members = [np.array([i]) for i in range(n)]
    scorer = system.build(_groups(data.enroll_full, members), _groups(data.runtime_full, members))
    test_e, test_r = data.tests[condition]
    seconds = None if data.test_seconds is None else data.test_seconds.get(condition)
    scores = np.asarray(_score(scorer, test_e, test_r, seconds), dtype=np.float64)  # (tests, enrolled)
    same = data.speakers[:, None] == data.speakers[None, :]
    valid = ~np.eye(n, dtype=bool)
    targets, nontargets = scores[same & valid], scores[~same & valid]
    eer, dcf = verification_figures(targets, nontargets)
    row = {"eer": eer, "min_dcf": dcf, "eer_sd": None, "min_dcf_sd": None, "top1": None, "top1_sd": None,
           "top1_at_threshold": None, "n_target": int(targets.size), "n_nontarget": int(nontargets.size)}
    return row, Trials([targets], [nontargets])


def run_profile(system: System, data: EvalEmbeddings, condition: str,
                draws: list[list[np.ndarray]]) -> tuple[dict, Trials]:
    names = np.asarray(sorted(set(data.speakers.tolist())))
    test_e, test_r = data.tests[condition]
    eers, dcfs, top1s, top1_thr = [], [], [], []
    trials = Trials([], [])
    n_target = n_nontarget = 0
    for members in draws:
        scorer = system.build(_groups(data.enroll_full, members), _groups(data.runtime_full, members))
        used = np.zeros(len(data.speakers), dtype=bool)
        used[np.concatenate(members)] = True
        rows = np.flatnonzero(~used)
        seconds = None if data.test_seconds is None else data.test_seconds.get(condition)
        scores = np.asarray(_score(scorer, test_e[rows], test_r[rows], None if seconds is None else seconds[rows]),
                            dtype=np.float64)  # (tests, profiles)
        truth = data.speakers[rows][:, None] == names[None, :]
        targets, nontargets = scores[truth], scores[~truth]
        eer, dcf = verification_figures(targets, nontargets)
        eers.append(eer)
        dcfs.append(dcf)
        thresholds = {} if system.threshold is None else {"system": system.threshold}
        ident = metrics.open_set_identification(scores, data.speakers[rows], names, thresholds)
        top1s.append(100.0 * ident["rank1_accuracy"])
        if system.threshold is not None:
            top1_thr.append(100.0 * ident["at_threshold"]["system"]["detection_identification_rate"])
        trials.targets.append(targets)
        trials.nontargets.append(nontargets)
        n_target, n_nontarget = int(targets.size), int(nontargets.size)
    eer, eer_sd = _mean_sd(eers)
    dcf, dcf_sd = _mean_sd(dcfs)
    top1, top1_sd = _mean_sd(top1s)
    row = {"eer": eer, "min_dcf": dcf, "eer_sd": eer_sd, "min_dcf_sd": dcf_sd, "top1": top1, "top1_sd": top1_sd,
           "top1_at_threshold": _mean_sd(top1_thr)[0] if top1_thr else None,
           "n_target": n_target, "n_nontarget": n_nontarget}
    return row, trials


def _not_run_row() -> dict:
    """The row of a system that is not run under a protocol (shown as "–")."""
    return {"eer": float("nan"), "min_dcf": float("nan"), "eer_sd": None, "min_dcf_sd": None, "top1": None,
            "top1_sd": None, "top1_at_threshold": None, "n_target": 0, "n_nontarget": 0}


def gain_recovered(eer_runtime: float, eer_enroll: float, eer_system: float,
                   min_gap: float = MIN_GAIN_GAP_POINTS) -> float | None:
    """(EER_runtime_sym - EER_x) / (EER_runtime_sym - EER_enroll_sym), EERs in percent;
    None when the gap is below ``min_gap`` points (the ratio would be noise)."""
    gap = eer_runtime - eer_enroll
    if not np.isfinite(gap) or gap < min_gap:
        return None
    return float((eer_runtime - eer_system) / gap)


# ============================================================================ result
def _fmt(value, digits=2) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _eer_cell(row: dict) -> str:
    sd = f" ± {row['eer_sd']:.2f}" if row["eer_sd"] is not None else ""
    return f"{_fmt(row['eer'])}{sd} ({_fmt(row['min_dcf'], 3)})"


def _top1_cell(row: dict) -> str:
    at = f" ({_fmt(row['top1_at_threshold'], 1)})" if row["top1_at_threshold"] is not None else ""
    return f"{_fmt(row['top1'], 1)}{at}"


@dataclasses.dataclass
class EvaluationResult:
    rows: list[dict]
    systems: list[str]
    conditions: list[str]
    protocols: list[str]
    trials: dict  # (system, condition, protocol) -> Trials
    info: dict = dataclasses.field(default_factory=dict)

    def row(self, system: str, condition: str, protocol: str) -> dict:
        for row in self.rows:
            if (row["system"], row["condition"], row["protocol"]) == (system, condition, protocol):
                return row
        raise KeyError((system, condition, protocol))

    def markdown(self) -> str:
        lines = []
        titles = {"all_pairs": "All pairs (enrollment utterance full & clean vs. every other test utterance)",
                  "profile": f"Profiles ({self.info.get('n_enroll', DEFAULT_ENROLL_UTTERANCES)} utterances each), "
                             f"mean ± sd over {self.info.get('draws', '?')} draws"}
        header = "| system | " + " | ".join(self.conditions) + " |"
        rule = "|---|" + "---|" * len(self.conditions)
        for protocol in self.protocols:
            first = self.row(self.systems[0], self.conditions[0], protocol)
            lines += [f"### {titles.get(protocol, protocol)}", "",
                      f"EER % (minDCF at p_target {P_TARGET:g}, normalised); "
                      f"{first['n_target']} target / {first['n_nontarget']} non-target trials"
                      + (" per draw" if protocol == "profile" else "") + " per condition.", "", header, rule]
            lines += self._system_rows(protocol, _eer_cell)
            lines += [f"Fraction of the runtime→enrollment EER gap recovered ({protocol}; "
                      f"shown where the gap ≥ {MIN_GAIN_GAP_POINTS:g} points):", "", header, rule]
            lines += self._system_rows(protocol, lambda r: _fmt(r["gain_recovered"]))
            if protocol == "profile":
                lines += ["Top-1 identification % among all profiles (at the system's own threshold, "
                          "where it has one):", "", header, rule]
                lines += self._system_rows(protocol, _top1_cell)
        return "\n".join(lines)

    def _system_rows(self, protocol: str, cell) -> list[str]:
        """One markdown row per system, `cell(row)` for each condition, then a blank line."""
        return [f"| {system} | " + " | ".join(cell(self.row(system, condition, protocol))
                                              for condition in self.conditions) + " |"
                for system in self.systems] + [""]

    def save_json(self, path: str | os.PathLike) -> None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.rows, indent=1) + "\n", encoding="utf-8")

    def plot_det(self, path: str | os.PathLike, protocol: str = "all_pairs") -> None:
        """DET curves (probit axes), one subplot per condition, one curve per system."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.stats import norm

        ticks = np.array([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40])
        lim = norm.ppf([0.0005, 0.5])
        figure, axes = plt.subplots(1, len(self.conditions), figsize=(5.2 * len(self.conditions), 5.2), squeeze=False)
        for axis, condition in zip(axes[0], self.conditions):
            for index, system in enumerate(self.systems):
                trials = self.trials[(system, condition, protocol)]
                if trials is None:
                    continue
                targets, nontargets = np.concatenate(trials.targets), np.concatenate(trials.nontargets)
                far, frr = det_points(targets, nontargets)
                eps = 1e-4
                # an artifact's cross score often retraces the in-run map of its kind: dash it
                style = (0, (4, 2)) if index >= 5 and not system.endswith("+fused") else "-"
                axis.plot(norm.ppf(np.clip(far, eps, 1 - eps)), norm.ppf(np.clip(frr, eps, 1 - eps)),
                          label=f"{system} ({self.row(system, condition, protocol)['eer']:.1f}%)", linewidth=1.3,
                          linestyle=style)
            axis.set_xticks(norm.ppf(ticks / 100))
            axis.set_xticklabels([f"{t:g}" for t in ticks])
            axis.set_yticks(norm.ppf(ticks / 100))
            axis.set_yticklabels([f"{t:g}" for t in ticks])
            axis.set_xlim(*lim)
            axis.set_ylim(*lim)
            axis.plot(lim, lim, color="grey", linewidth=0.5, linestyle=":")
            axis.set_title(f"{condition} ({protocol})")
            axis.set_xlabel("false accept rate (%)")
            axis.set_ylabel("false reject rate (%)")
            axis.grid(True, linewidth=0.3)
            axis.legend(fontsize=7, loc="upper right", framealpha=0.85)
        figure.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(figure)


def det_points(targets: np.ndarray, nontargets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at every distinct score as threshold (accept when score > threshold), plus the ends."""
    thresholds = np.unique(np.concatenate([targets, nontargets]))
    thresholds = np.concatenate([[-np.inf], thresholds])
    frr = np.searchsorted(np.sort(targets), thresholds, side="right") / len(targets)
    far = 1.0 - np.searchsorted(np.sort(nontargets), thresholds, side="right") / len(nontargets)
    return far, frr


# ============================================================================ evaluate
def discover_artifacts(directory: str | os.PathLike = DEFAULT_ARTIFACTS_DIR) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    return sorted(p for p in directory.iterdir() if (p / "artifact.json").is_file()) if directory.is_dir() else []


def _load_artifacts(artifacts, explicit: bool) -> list[AlignmentArtifact]:
    loaded = []
    for item in artifacts:
        if isinstance(item, AlignmentArtifact):
            loaded.append(item)
            continue
        try:
            loaded.append(AlignmentArtifact.load(item))
        except ArtifactError as exc:
            if explicit:
                raise
            print(f"nessa eval: skipping {item}: {exc}")
    return loaded


def evaluate(enroll_embedder, runtime_embedder, eval_dir=DEFAULT_EVAL_DIR, *, artifacts=None,
             crops: Sequence[float] = DEFAULT_CROPS, draws: int = DEFAULT_DRAWS, seed: int = 0,
             cache_dir=DEFAULT_CACHE_DIR, anchors_dir=DEFAULT_ANCHORS_DIR, noise_snr: float | None = None,
             noise_type: str = "babble", n_enroll: int = DEFAULT_ENROLL_UTTERANCES,
             extra_systems: Sequence[System] = (), provider: EmbeddingProvider | None = None,
             progress: bool = True, adapt: bool | dict = False) -> EvaluationResult:
    """Evaluate every system on every condition under both protocols; see the module docstring.

    ``artifacts``: paths or loaded artifacts (None: every artifact under nessa/artifacts).
    Artifacts are checked against the two embedders (when given). ``noise_snr``: add
    ``noise_type`` ("white" / "babble") noise at this SNR (dB) to the test side of every
    condition. ``provider`` replaces audio + models (the embedders may then be None).
    ``adapt``: also run ``<artifact>+adapted`` / ``+adapted+fused`` per artifact (profile
    protocol only): the alignment adapted on each draw's enrollment utterances alone
    (``nessa.lab.adapt.gallery_systems``; a dict is its ``AdaptConfig``).
    """
    started = time.monotonic()
    explicit = artifacts is not None
    artifact_list = _load_artifacts(discover_artifacts() if artifacts is None else artifacts, explicit)
    if enroll_embedder is not None and runtime_embedder is not None:
        fitting = []
        for artifact in artifact_list:
            try:
                artifact.check_embedders(runtime_embedder, enroll_embedder)
                fitting.append(artifact)
            except ArtifactError as exc:
                if explicit:
                    raise
                print(f"nessa eval: skipping {artifact.name}: {exc}")
        artifact_list = fitting
    if provider is None:
        provider = AudioEmbeddingProvider(enroll_embedder, runtime_embedder, eval_dir, anchors_dir=anchors_dir,
                                          cache_dir=cache_dir, crops=crops, seed=seed, progress=progress)
    noise = None if noise_snr is None else NoiseSpec(noise_type, float(noise_snr))
    conditions = make_conditions(crops, noise)
    data = provider.evaluation_set(conditions)
    anchor_files = provider.anchor_files()
    embedded = time.monotonic()

    anchor_names, anchors_e, anchors_r = anchor_vectors(anchor_files)
    maps = fit_in_run_maps(anchor_files)
    systems = [symmetric_system(ENROLL_SYM, True), symmetric_system(RUNTIME_SYM, False),
               anchor_logit_system(anchors_e, anchors_r), map_system("ridge", "ridge", maps.ridge),
               map_system("cca", "cca", maps.cca)]
    for artifact in artifact_list:
        systems += artifact_systems(artifact)
    if adapt:
        from nessa.lab.adapt import gallery_systems

        for artifact in artifact_list:
            systems += gallery_systems(artifact, data, adapt if isinstance(adapt, dict) else None)
    systems += list(extra_systems)
    names = [system.name for system in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate system names: {names}")

    draw_sets = profile_draws(data.speakers, n_enroll, draws, seed)
    rows, trials = [], {}
    for protocol in PROTOCOLS:
        for condition in conditions:
            for system in systems:
                if protocol not in system.protocols:
                    row, trial = _not_run_row(), None
                elif protocol == "all_pairs":
                    row, trial = run_all_pairs(system, data, condition.name)
                else:
                    row, trial = run_profile(system, data, condition.name, draw_sets)
                rows.append({"system": system.name, "condition": condition.name, "protocol": protocol, **row})
                trials[(system.name, condition.name, protocol)] = trial
    by_key = {(r["system"], r["condition"], r["protocol"]): r for r in rows}
    for row in rows:
        runtime = by_key[(RUNTIME_SYM, row["condition"], row["protocol"])]["eer"]
        enroll = by_key[(ENROLL_SYM, row["condition"], row["protocol"])]["eer"]
        row["gain_recovered"] = gain_recovered(runtime, enroll, row["eer"])
    rows = [{key: row[key] for key in ROW_KEYS} | {k: v for k, v in row.items() if k not in ROW_KEYS}
            for row in rows]
    info = {"seed": seed, "draws": draws, "n_enroll": n_enroll, "crops": list(crops),
            "noise": None if noise is None else dataclasses.asdict(noise),
            "n_utterances": len(data.speakers), "n_speakers": len(set(data.speakers.tolist())),
            "anchors": len(anchor_names), "in_run_maps": maps.report,
            "artifacts": {a.name: a.sha256 for a in artifact_list},
            "timing_seconds": {"embedding": round(embedded - started, 1),
                               "scoring": round(time.monotonic() - embedded, 1)}}
    return EvaluationResult(rows=rows, systems=names, conditions=[c.name for c in conditions],
                            protocols=list(PROTOCOLS), trials=trials, info=info)


# ============================================================================ micro-benchmark
def time_calls_us(call: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 0) -> np.ndarray:
    """Microseconds of ``call(query)`` for each query, on one thread (torch's pool is set to
    1 meanwhile; numpy's BLAS does not split a (1 x d) product across threads), after
    ``warmup`` untimed calls on the first queries."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for query in queries[:warmup]:
            call(query)
        times = np.empty(len(queries))
        clock = time.perf_counter_ns
        for i, query in enumerate(queries):
            start = clock()
            call(query)
            times[i] = clock() - start
    finally:
        torch.set_num_threads(previous)
    return times / 1000.0


def benchmark_scoring(artifact: AlignmentArtifact, n_candidates: int = 10, repeats: int = 5000,
                      seed: int = 0) -> dict:
    """Time to score ONE runtime embedding against ``n_candidates`` stored profiles as the
    service does: profiles prepared once (``prepare_candidates``), the per-query work
    (alignment transform, features, S-norm, calibrated LLR) timed, one thread
    (``time_calls_us``). Returns p50/p95/mean in microseconds."""
    rng = np.random.default_rng(seed)
    profiles_e = rng.normal(size=(n_candidates, artifact.target_dim))
    profiles_r = l2_normalise(rng.normal(size=(n_candidates, artifact.source_dim)))
    queries = l2_normalise(rng.normal(size=(repeats, artifact.source_dim))).astype(np.float32)
    prepared = artifact.scorer.prepare_candidates(profiles_e, profiles_r)

    def score(query):
        artifact.scorer.score_prepared(query[None, :], prepared)

    micro = time_calls_us(score, queries, warmup=min(200, repeats))
    return {"artifact": artifact.name, "n_candidates": n_candidates, "repeats": repeats,
            "p50_us": round(float(np.percentile(micro, 50)), 2), "p95_us": round(float(np.percentile(micro, 95)), 2),
            "p99_us": round(float(np.percentile(micro, 99)), 2),
            "mean_us": round(float(micro.mean()), 2)}


# ============================================================================ CLI support
def add_arguments(parser: argparse.ArgumentParser, *, shared_data_dir=DEFAULT_SHARED_DATA,
                  cache_dir=DEFAULT_CACHE_DIR) -> argparse.ArgumentParser:
    """The `nessa eval` flags (the caller supplies the embedders; see ``main_args``)."""
    shared = pathlib.Path(shared_data_dir)
    parser.add_argument("--eval-dir", default=str(shared / "librispeech" / "test-other"),
                        help="<speaker>/<utterance>.{wav,flac} folder (default: %(default)s)")
    parser.add_argument("--anchors-dir", default=str(shared / "librispeech" / "train-clean-100"),
                        help="anchor speakers and alignment-fitting corpus (default: %(default)s)")
    parser.add_argument("--artifact", action="append", default=None,
                        help="alignment artifact directory (repeatable; default: every one under nessa/artifacts)")
    parser.add_argument("--crop", action="append", type=float, default=None,
                        help="test-side crop length in seconds (repeatable; default: 2 and 1)")
    parser.add_argument("--no-crops", action="store_true", help="full length only")
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="profile draws (default: %(default)s)")
    parser.add_argument("--enroll-utterances", type=int, default=DEFAULT_ENROLL_UTTERANCES,
                        help="utterances per profile (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-snr", type=float, default=None, help="add noise to the test side at this SNR (dB)")
    parser.add_argument("--noise-type", choices=("babble", "white"), default="babble")
    parser.add_argument("--cache-dir", default=str(cache_dir))
    parser.add_argument("--json", help="write the result rows here")
    parser.add_argument("--markdown", help="write the markdown tables here (they are always printed)")
    parser.add_argument("--det", help="write DET curves (PNG) here")
    parser.add_argument("--det-protocol", choices=PROTOCOLS, default="all_pairs")
    parser.add_argument("--adapt", action="store_true",
                        help="also evaluate each artifact adapted on every profile draw's enrollment utterances "
                             "(<artifact>+adapted[+fused], profile protocol only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main_args(args: argparse.Namespace, enroll_embedder, runtime_embedder) -> EvaluationResult:
    """Run `nessa eval` from parsed ``add_arguments`` flags; prints the tables, writes outputs."""
    crops = () if args.no_crops else tuple(args.crop) if args.crop else DEFAULT_CROPS
    started = time.monotonic()
    result = evaluate(enroll_embedder, runtime_embedder, args.eval_dir, artifacts=args.artifact, crops=crops,
                      draws=args.draws, seed=args.seed, cache_dir=args.cache_dir, anchors_dir=args.anchors_dir,
                      noise_snr=args.noise_snr, noise_type=args.noise_type, n_enroll=args.enroll_utterances,
                      progress=not args.quiet, adapt=getattr(args, "adapt", False))
    table = result.markdown()
    print(table)
    print(f"({result.info['n_speakers']} speakers, {result.info['n_utterances']} utterances, "
          f"{result.info['anchors']} anchor speakers; {time.monotonic() - started:.0f} s)")
    if args.markdown:
        pathlib.Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.json:
        result.save_json(args.json)
    if args.det:
        result.plot_det(args.det, protocol=args.det_protocol)
    return result
