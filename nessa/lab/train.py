"""Train an alignment artifact: pair-embed chunks, fit on some speakers, measure and
calibrate on held-out dev speakers, refit on all speakers, save.

Dev trials imitate the service. A dev speaker's profile is the L2-normalised mean of the
embeddings of its first-half material (the whole first half plus its 3-s tiles), with
both models: the enrollment-space vector and the runtime-space vector a profile stores.
Tests are 1/2/3-s tiles of the second halves, embedded by the runtime model. Every test
is scored against every dev profile.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np

from nessa import metrics
from nessa.artifact import AlignmentArtifact, utc_now
from nessa.calibration import LogisticCalibration, THRESHOLD_NAMES
from nessa.kinds import KINDS
from nessa.lab.calibration_fit import cllr, fit_on_trials, threshold_report
from nessa.lab.config import config_from_any
from nessa.lab.data import (ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST, ChunkSpec, FileEmbeddings,
                            Utterance, default_audio_loader, describe_utterances, embed_corpus, list_utterances,
                            speech_only_loader)
from nessa.lab.linear import RidgeSolver, fit_cca
from speechcore.embedder import Embedder, l2_normalise

REGRESSION_TARGETS = ("chunk", "speaker")


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
    """Everything that shapes an artifact. The defaults are the shipped configuration."""

    kind: str = "ridge"
    #: drop non-speech with Silero VAD before chunking (the service embeds speech only)
    speech_only: bool = True
    # chunking (see nessa.lab.data.ChunkSpec)
    chunk_seconds: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    chunks_per_length: int = 8
    include_full: bool = True
    profile_window_seconds: float = 3.0
    test_seconds: tuple[float, ...] = (1.0, 2.0, 3.0)
    #: what each runtime chunk is regressed onto: the same chunk's enrollment embedding
    #: ("chunk"), or its speaker's mean whole-utterance enrollment embedding ("speaker")
    regression_target: str = "chunk"
    #: ridge penalties to try, relative to the number of training pairs; chosen on dev
    ridge_alphas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    #: CCA settings (kind="cca"): shrinkages to try on dev, components kept
    cca_shrinkages: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9)
    cca_components: int = 96
    # split, calibration, thresholds
    dev_fraction: float = 0.2
    calibration_prior: float = 0.5
    min_dcf_p_target: float = metrics.DEFAULT_P_TARGET
    #: operating point the service should use. Not FAR 1 %: in open-set identification
    #: against the 50 dev profiles, a per-trial FAR of 1 % let 35 % of unknown speakers
    #: through as somebody; FAR 0.1 % let 5 % through and still identified 86 % of the
    #: known ones (fused score, seed 0).
    default_threshold: str = "far_0.1pct"
    #: segments per embed() call (CAM++ stacks equal lengths into one forward pass)
    batch_size: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; known: {sorted(KINDS)}")
        if self.regression_target not in REGRESSION_TARGETS:
            raise ValueError(f"regression_target must be one of {REGRESSION_TARGETS}")
        if self.default_threshold not in THRESHOLD_NAMES:
            raise ValueError(f"default_threshold must be one of {THRESHOLD_NAMES}")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError("dev_fraction must be between 0 and 1")

    @classmethod
    def from_any(cls, config: "AlignmentConfig | dict | None") -> "AlignmentConfig":
        return config_from_any(cls, config, "alignment")

    def chunk_spec(self, seed: int) -> ChunkSpec:
        return ChunkSpec(chunk_seconds=tuple(self.chunk_seconds), chunks_per_length=self.chunks_per_length,
                         include_full=self.include_full, profile_window_seconds=self.profile_window_seconds,
                         test_seconds=tuple(self.test_seconds), seed=seed)

    def as_dict(self) -> dict:
        return {field.name: (list(value) if isinstance(value := getattr(self, field.name), tuple) else value)
                for field in dataclasses.fields(self)}


# ----------------------------------------------------------------------------- data assembly
def split_speakers(speakers: Sequence[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by speaker into (fit, dev); both sorted."""
    ordered = sorted(set(speakers))
    if len(ordered) < 4:
        raise ValueError(f"need at least 4 speakers to hold some out for dev, got {len(ordered)}")
    n_dev = min(len(ordered) - 2, max(2, int(round(dev_fraction * len(ordered)))))
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    dev = sorted(ordered[i] for i in permutation[:n_dev])
    fit = sorted(ordered[i] for i in permutation[n_dev:])
    return fit, dev


def regression_pairs(files: Sequence[FileEmbeddings], speakers: set[str], target_mode: str):
    """(runtime embeddings, enrollment-space targets) for the chunks and whole utterances."""
    xs, ys = [], []
    speaker_centres = {}
    if target_mode == "speaker":
        by_speaker: dict[str, list[np.ndarray]] = {}
        for item in files:
            if item.speaker in speakers:
                full = item.plan.roles == ROLE_FULL
                by_speaker.setdefault(item.speaker, []).append(item.target[full] if full.any() else item.target)
        speaker_centres = {spk: l2_normalise(np.concatenate(v).mean(axis=0)) for spk, v in by_speaker.items()}
    for item in files:
        if item.speaker not in speakers:
            continue
        rows = np.isin(item.plan.roles, (ROLE_CHUNK, ROLE_FULL))
        xs.append(item.source[rows])
        if target_mode == "speaker":
            ys.append(np.repeat(speaker_centres[item.speaker][None, :], rows.sum(), axis=0))
        else:
            ys.append(item.target[rows])
    if not xs:
        raise ValueError("no regression pairs: every file was empty")
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)


@dataclasses.dataclass
class DevTrials:
    profile_speakers: np.ndarray
    profile_source: np.ndarray
    profile_target: np.ndarray
    test_speakers: np.ndarray
    test_seconds: np.ndarray
    test_source: np.ndarray
    test_target: np.ndarray

    @property
    def is_target(self) -> np.ndarray:
        """(tests, profiles) same-speaker mask."""
        return self.test_speakers[:, None] == self.profile_speakers[None, :]


def build_dev_trials(files: Sequence[FileEmbeddings], speakers: set[str]) -> DevTrials:
    profile_rows: dict[str, tuple[list, list]] = {}
    tests = {"speaker": [], "seconds": [], "source": [], "target": []}
    for item in files:
        if item.speaker not in speakers:
            continue
        profile = item.plan.roles == ROLE_PROFILE
        sources, targets = profile_rows.setdefault(item.speaker, ([], []))
        sources.append(item.source[profile])
        targets.append(item.target[profile])
        test = item.plan.roles == ROLE_TEST
        tests["speaker"] += [item.speaker] * int(test.sum())
        tests["seconds"].append(item.plan.seconds[test])
        tests["source"].append(item.source[test])
        tests["target"].append(item.target[test])
    names = sorted(spk for spk, (sources, _) in profile_rows.items() if sum(len(s) for s in sources))
    if len(names) < 2 or not tests["speaker"]:
        raise ValueError("dev split has too little audio for trials (need 2+ speakers with profile and test material)")
    return DevTrials(
        profile_speakers=np.asarray(names),
        profile_source=l2_normalise(np.stack([np.concatenate(profile_rows[n][0]).mean(axis=0) for n in names])),
        profile_target=l2_normalise(np.stack([np.concatenate(profile_rows[n][1]).mean(axis=0) for n in names])),
        test_speakers=np.asarray(tests["speaker"]),
        test_seconds=np.concatenate(tests["seconds"]).astype(np.float64),
        test_source=np.concatenate(tests["source"]),
        test_target=np.concatenate(tests["target"]))


# ----------------------------------------------------------------------------- maps
def candidate_params(kind: str, x: np.ndarray, y: np.ndarray, config: AlignmentConfig) -> list[tuple[dict, dict]]:
    """[(hyper-parameters, float64 params)] for every setting tried on dev, weakest
    regularisation first."""
    if kind == "ridge":
        solver = RidgeSolver(x, y)
        return [({"relative_alpha": alpha}, solver.solve(alpha).params()) for alpha in sorted(config.ridge_alphas)]
    if kind == "cca":
        return [({"shrinkage": s, "n_components": config.cca_components},
                 fit_cca(x, y, config.cca_components, s).params()) for s in sorted(config.cca_shrinkages)]
    raise ValueError(f"no trainer for kind {kind!r}")


def fit_params(kind: str, x: np.ndarray, y: np.ndarray, hyper: dict) -> dict:
    if kind == "ridge":
        return RidgeSolver(x, y).solve(hyper["relative_alpha"]).params()
    return fit_cca(x, y, hyper["n_components"], hyper["shrinkage"]).params()


def cross_scores(kind: str, params: dict, trials: DevTrials) -> np.ndarray:
    """(tests, profiles) cosine between aligned runtime tests and profiles' enrollment vectors."""
    aligned = l2_normalise(KINDS[kind].transform_source(params, trials.test_source.astype(np.float64)))
    profiles = l2_normalise(KINDS[kind].transform_target(params, trials.profile_target.astype(np.float64)))
    return aligned @ profiles.T


def _split_scores(scores: np.ndarray, is_target: np.ndarray, rows: np.ndarray | None = None):
    if rows is not None:
        scores, is_target = scores[rows], is_target[rows]
    return scores[is_target], scores[~is_target]


def _summaries(scores: np.ndarray, trials: DevTrials, p_target: float) -> dict:
    """Pooled and per-test-duration EER / minDCF."""
    is_target = trials.is_target
    out = {"pooled": metrics.verification_summary(*_split_scores(scores, is_target), p_target)}
    for seconds in np.unique(trials.test_seconds):
        rows = trials.test_seconds == seconds
        out[f"{seconds:g}s"] = metrics.verification_summary(*_split_scores(scores, is_target, rows), p_target)
    return out


def _per_duration_threshold_report(calibration: LogisticCalibration, llr: np.ndarray, trials: DevTrials) -> dict:
    report = {"pooled": threshold_report(calibration, *_split_scores(llr, trials.is_target))}
    for seconds in np.unique(trials.test_seconds):
        rows = trials.test_seconds == seconds
        report[f"{seconds:g}s"] = threshold_report(calibration, *_split_scores(llr, trials.is_target, rows))
    return report


def evaluate_on_dev(cross, trials: "DevTrials", config):
    """Calibrate the cross-model score alone and fused with the symmetric runtime score on
    the development trials; returns both calibrations and their figures (shared by the
    ridge and the network trainers)."""
    p_target = config.min_dcf_p_target
    runtime = trials.test_source @ trials.profile_source.T
    enroll_reference = trials.test_target @ trials.profile_target.T
    cross_calibration, cross_llr, cross_report = _calibrate([cross], ("cross_cosine",), trials, config)
    fused_calibration, fused_llr, fused_report = _calibrate([runtime, cross], ("runtime_cosine", "cross_cosine"),
                                                            trials, config)
    threshold_sets = {"fused": fused_calibration.thresholds, "cross": cross_calibration.thresholds}
    report = {
        "runtime_symmetric": _summaries(runtime, trials, p_target),
        "cross": _summaries(cross, trials, p_target),
        "fused": _summaries(fused_llr, trials, p_target),
        "enroll_symmetric_reference": _summaries(enroll_reference, trials, p_target),
        "calibration": {"cross": cross_report, "fused": fused_report},
        "open_set_identification": {
            kind: metrics.open_set_identification(llr, trials.test_speakers, trials.profile_speakers,
                                                  threshold_sets[kind])
            for kind, llr in (("fused", fused_llr), ("cross", cross_llr))},
    }
    return cross_calibration, fused_calibration, report


def dev_evaluation(split: dict, report: dict, trials: "DevTrials", *, extra: dict, timing: dict) -> dict:
    """The artifact's `metrics`: split sizes, the dev figures and a short summary."""
    split = {**split, "dev_profiles": int(len(trials.profile_speakers)), "dev_tests": int(len(trials.test_speakers)),
             "dev_target_trials": int(trials.is_target.sum()),
             "dev_nontarget_trials": int((~trials.is_target).sum())}
    kinds = ("runtime_symmetric", "cross", "fused", "enroll_symmetric_reference")
    evaluation = {"split": split, **extra, **report, "timing_seconds": timing}
    evaluation["summary"] = {
        "dev_eer_percent": {kind: evaluation[kind]["pooled"]["eer_percent"] for kind in kinds},
        "dev_min_dcf_normalised": {kind: evaluation[kind]["pooled"]["min_dcf_normalised"] for kind in kinds},
    }
    return evaluation


def _calibrate(features: list[np.ndarray], names: tuple[str, ...], trials: DevTrials,
               config: AlignmentConfig) -> tuple[LogisticCalibration, np.ndarray, dict]:
    """Fit a calibration on the dev trials; returns it (with thresholds), its LLRs and a report."""
    is_target = trials.is_target
    calibration, llr = fit_on_trials(features, is_target, names, prior=config.calibration_prior,
                                         default_threshold=config.default_threshold)
    target_llr, nontarget_llr = _split_scores(llr, is_target)
    report = {"cllr_bits": round(cllr(target_llr, nontarget_llr), 5),
              "thresholds": _per_duration_threshold_report(calibration, llr, trials)}
    return calibration, llr, report


# ----------------------------------------------------------------------------- training
def train_alignment(source: Embedder, target: Embedder, utterances: list[Utterance], *,
                    out_dir: str | os.PathLike, name: str, config: AlignmentConfig | dict | None = None,
                    seed: int = 0, cache_dir: str | os.PathLike, progress: bool = True, command: str = "",
                    load_audio: Callable[[str], np.ndarray] | None = None,
                    data_sources: Sequence[str] = ()) -> AlignmentArtifact:
    """Train, evaluate on dev speakers, calibrate, refit on all speakers and save.

    ``source`` is the runtime model (its embeddings get aligned), ``target`` the
    enrollment model. Deterministic for a given seed, corpus and pair of models.
    ``load_audio`` (path -> 16 kHz float32) defaults to ``speechcore.audio.load_audio_file``;
    with ``config.speech_only`` its output goes through Silero VAD first.
    """
    config = AlignmentConfig.from_any(config)
    started = time.monotonic()
    utterances = sorted(utterances)
    data_description, data_sha256 = describe_utterances(utterances)

    load_audio = load_audio or default_audio_loader()
    if config.speech_only:
        load_audio = speech_only_loader(load_audio)
    files = embed_corpus(utterances, source, target, config.chunk_spec(seed), cache_dir=cache_dir,
                         load_audio=load_audio, audio_tag="speech_only" if config.speech_only else "raw",
                         batch_size=config.batch_size, progress=progress)
    embedded = time.monotonic()

    fit_speakers, dev_speakers = split_speakers([item.speaker for item in files], config.dev_fraction, seed)
    x_fit, y_fit = regression_pairs(files, set(fit_speakers), config.regression_target)
    trials = build_dev_trials(files, set(dev_speakers))
    is_target = trials.is_target
    p_target = config.min_dcf_p_target

    # Choose the regularisation on dev: lowest pooled cross-model EER, then lowest minDCF,
    # then the strongest regularisation (the last tie-break favours the smoother map).
    selection = []
    for order, (hyper, params) in enumerate(candidate_params(config.kind, x_fit, y_fit, config)):
        summary = metrics.verification_summary(*_split_scores(cross_scores(config.kind, params, trials), is_target),
                                               p_target)
        selection.append({**hyper, "cross_eer_percent": summary["eer_percent"], "cross_min_dcf": summary["min_dcf"],
                          "_order": order, "_params": params})
    best = min(selection, key=lambda row: (row["cross_eer_percent"], row["cross_min_dcf"], -row["_order"]))
    hyper = {key: value for key, value in best.items()
             if not key.startswith("_") and key not in ("cross_eer_percent", "cross_min_dcf")}

    cross = cross_scores(config.kind, best["_params"], trials)
    cross_calibration, fused_calibration, dev_report = evaluate_on_dev(cross, trials, config)

    # The shipped map: same settings, every training speaker.
    x_all, y_all = regression_pairs(files, set(fit_speakers) | set(dev_speakers), config.regression_target)
    params = fit_params(config.kind, x_all, y_all, hyper)
    finished = time.monotonic()

    split = {"fit_speakers": len(fit_speakers), "dev_speakers": len(dev_speakers),
             "fit_pairs": int(len(x_fit)), "final_pairs": int(len(x_all))}
    evaluation = dev_evaluation(split, dev_report, trials,
                                extra={"selected": hyper,
                                       "selection": [{k: v for k, v in row.items() if not k.startswith("_")}
                                                     for row in selection]},
                                timing={"embedding": round(embedded - started, 1),
                                        "fitting": round(finished - embedded, 1)})

    artifact = AlignmentArtifact(
        name=name, kind=config.kind,
        source_version=source.version, source_dim=int(source.dim), source_weights_sha256=source.weights_sha256,
        target_version=target.version, target_dim=int(target.dim), target_weights_sha256=target.weights_sha256,
        params=params, config={**config.as_dict(), "seed": seed},
        data={**data_description, "n_utterances_used": len(files),
              "sources": [str(pathlib.PurePath(s)) for s in data_sources],
              "fit_speakers": fit_speakers, "dev_speakers": dev_speakers},
        data_sha256=data_sha256, metrics=evaluation,
        calibration=cross_calibration.to_dict(), fusion=fused_calibration.to_dict(),
        command=command, created_at=utc_now())
    artifact.save(out_dir)
    return artifact


def train_from_folder(source: Embedder, target: Embedder, train_dirs: Sequence[str], out_dir: str | os.PathLike,
                      name: str, seed: int = 0, cache_dir: str | os.PathLike = "var/cache/embeddings",
                      command: str = "", config: AlignmentConfig | dict | None = None,
                      progress: bool = True) -> AlignmentArtifact:
    """Train ``source`` (runtime) -> ``target`` (enrollment) on every utterance under ``train_dirs``.

    Each entry may be a speaker-folder corpus, a flat LibriSpeech folder or a
    ``<speaker_id> <path>`` list file (see ``nessa.lab.data.list_utterances``). Speaker ids
    are taken as they are, so the same speaker listed in two sources is one speaker.
    The artifact is written to ``<out_dir>/<name>/`` and returned.
    """
    if not train_dirs:
        raise ValueError("give at least one training corpus")
    utterances = sorted({item for directory in train_dirs for item in list_utterances(directory)})
    return train_alignment(source, target, utterances, out_dir=out_dir, name=name, config=config, seed=seed,
                           cache_dir=cache_dir, progress=progress, command=command,
                           data_sources=[str(directory) for directory in train_dirs])
