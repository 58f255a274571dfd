"""Refit an artifact's fused calibration with same-words, different-speaker negatives
(issue #12: same-words impostors).

The fused LLR is ``w . features + b`` over the artifact's fused features (S-normalised as
the service scores them). It was fitted on LibriSpeech dev trials, where no impostor says
the claimed speaker's words. Here it is refitted on two kinds of trials, each feature
computed by the artifact's own ``scorer`` exactly as verify computes it:

* **LibriSpeech**: the artifact's own calibration trials, rebuilt with the training code
  (``nessa.lab.train.build_dev_trials`` on the chunks of its recorded ``dev_speakers`` of
  train-clean-100, chunked as its config says);
* **Speech Commands**: the ``speech-commands`` and ``same-words`` conditions of
  ``shift_protocol`` restricted to the given speakers (profile and test speaker both in
  the set): genuine trials (3 other words of the speaker), different-words impostors and
  same-words impostors (another speaker saying the profile's very words).

``domain_weight`` is Speech Commands' share of each class (LibriSpeech has the rest);
within the Speech Commands non-targets, ``same_words_weight`` is the same-words impostors'
share. The operating thresholds are set, as the original's, on the LibriSpeech dev trials'
LLRs (the FAR promise stays a LibriSpeech-dev one). Only the ``scoring["fused"]`` section
changes: the alignment, its cohort and the cross-model calibration are the artifact's.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from nessa.calibration import LogisticCalibration
from nessa.lab.calibration_fit import fit_logistic_calibration, operating_thresholds
from nessa.lab.evaluation.same_words_features import condition_vectors


@dataclasses.dataclass(frozen=True)
class TrialSet:
    """Trials as a feature table: ``features`` (n, k) in ``names`` order, with kinds."""

    names: tuple[str, ...]
    features: np.ndarray
    is_target: np.ndarray
    #: (n,) bool: a same-words impostor
    same_words: np.ndarray
    #: (n,) the speaker of each trial's profile and of its test
    profile_speaker: np.ndarray
    test_speaker: np.ndarray

    def select(self, rows: np.ndarray) -> "TrialSet":
        return TrialSet(self.names, self.features[rows], self.is_target[rows], self.same_words[rows],
                        self.profile_speaker[rows], self.test_speaker[rows])

    def within(self, speakers: set) -> "TrialSet":
        """The trials whose profile and test speakers are both in ``speakers``."""
        keep = np.array([p in speakers and t in speakers for p, t in zip(self.profile_speaker, self.test_speaker)],
                        dtype=bool)
        return self.select(keep)

    @staticmethod
    def stack(sets: list["TrialSet"]) -> "TrialSet":
        return TrialSet(sets[0].names, *[np.concatenate([getattr(s, f) for s in sets]) for f in
                                         ("features", "is_target", "same_words", "profile_speaker", "test_speaker")])


def fused_names(artifact) -> tuple[str, ...]:
    return tuple(artifact.scorer.bands.pooled(True).features)


# ----------------------------------------------------------------------------- LibriSpeech
def librispeech_dev_trials(artifact, source, target, train_dir, cache_dir, *, max_speakers: int | None = None,
                           progress: bool = False):
    """The artifact's LibriSpeech calibration trials (``DevTrials``), rebuilt from its recorded
    dev speakers and chunking (speech only, as it was trained; embeddings through the cache);
    ``max_speakers``: the first (sorted) that many of them only."""
    from nessa.lab.data import default_audio_loader, embed_corpus, list_utterances, speech_only_loader
    from nessa.lab.train import AlignmentConfig, build_dev_trials

    config = artifact.config
    base = AlignmentConfig.from_any({k: v for k, v in config.items()
                                     if k in {f.name for f in dataclasses.fields(AlignmentConfig)}})
    dev = set(sorted(artifact.data["dev_speakers"])[:max_speakers])
    utterances = [u for u in list_utterances(train_dir) if u[0] in dev]
    if {u[0] for u in utterances} != dev:
        raise ValueError(f"{train_dir} lacks some of the artifact's dev speakers")
    load = speech_only_loader(default_audio_loader()) if base.speech_only else default_audio_loader()
    files = embed_corpus(utterances, source, target, base.chunk_spec(int(config.get("seed", 0))),
                         cache_dir=cache_dir, load_audio=load, audio_tag="speech_only" if base.speech_only else "raw",
                         batch_size=base.batch_size, progress=progress)
    return build_dev_trials(files, dev)


def dev_trial_set(artifact, trials) -> TrialSet:
    """Every (test chunk, profile) pair of ``DevTrials`` as the artifact's fused features."""
    names = fused_names(artifact)
    features = artifact.scorer.candidate_features(trials.test_source, trials.profile_target, trials.profile_source)
    table = np.stack([features[name].ravel() for name in names], axis=1)
    is_target = trials.is_target.ravel()
    shape = trials.is_target.shape
    profile = np.broadcast_to(trials.profile_speakers[None, :], shape).ravel()
    test = np.broadcast_to(trials.test_speakers[:, None], shape).ravel()
    return TrialSet(names, table, is_target, np.zeros(len(is_target), dtype=bool), profile, test)


# ----------------------------------------------------------------------------- Speech Commands
def speech_commands_trial_set(artifact, conditions: dict, vectors) -> TrialSet:
    """Every ``speech-commands`` and ``same-words`` trial (genuine trials once: both conditions
    share them) as the artifact's fused features; ``within`` picks speakers."""
    names = fused_names(artifact)
    sets, seen = [], set()
    for name in ("speech-commands", "same-words"):
        condition = conditions[name]
        profiles_e, profiles_r, tests_r, _ = condition_vectors(condition, vectors)
        features = artifact.scorer.candidate_features(tests_r, profiles_e, profiles_r)
        keep = []
        for (t, p), target in zip(condition.trials, condition.is_target):
            key = (condition.tests[t][1], condition.profiles[p][1])
            keep.append(not (target and key in seen))
            seen.add(key)
        rows = condition.trials[np.asarray(keep, dtype=bool)]
        target = condition.is_target[np.asarray(keep, dtype=bool)]
        sets.append(TrialSet(names, np.stack([features[f][rows[:, 0], rows[:, 1]] for f in names], axis=1)
                             .astype(np.float64), target, (~target) & (name == "same-words"),
                             np.array([condition.profiles[p][0] for p in rows[:, 1]]),
                             np.array([condition.tests[t][0] for t in rows[:, 0]])))
    return TrialSet.stack(sets)


# ----------------------------------------------------------------------------- the fit
def trial_weights(librispeech: TrialSet, commands: TrialSet, domain_weight: float,
                  same_words_weight: float) -> tuple[TrialSet, np.ndarray]:
    """Both sets stacked, and each trial's weight within its class (see the module's doc)."""
    both = TrialSet.stack([librispeech, commands])
    domain = np.r_[np.zeros(len(librispeech.is_target), dtype=bool), np.ones(len(commands.is_target), dtype=bool)]
    weights = np.zeros(len(domain))
    for target in (True, False):
        cls = both.is_target == target
        groups = [(cls & ~domain, 1.0 - domain_weight)]
        if target or not commands.same_words.any() or same_words_weight <= 0:
            groups.append((cls & domain, domain_weight))
        else:
            groups += [(cls & domain & ~both.same_words, domain_weight * (1.0 - same_words_weight)),
                       (cls & domain & both.same_words, domain_weight * same_words_weight)]
        for rows, share in groups:
            if rows.any():
                weights[rows] = share / rows.sum()
    return both, weights


def refit_fusion(librispeech: TrialSet, commands: TrialSet, *, domain_weight: float, same_words_weight: float,
                 prior: float = 0.5, default_threshold: str = "far_0.1pct") -> LogisticCalibration:
    """The fused calibration refitted on both trial sets, thresholds on LibriSpeech's LLRs."""
    both, weights = trial_weights(librispeech, commands, domain_weight, same_words_weight)
    t = both.is_target
    calibration = fit_logistic_calibration(both.features[t], both.features[~t], both.names, prior=prior,
                                           target_weights=weights[t], nontarget_weights=weights[~t])
    llr = calibration.llr(*librispeech.features.T)
    thresholds = operating_thresholds(llr[librispeech.is_target], llr[~librispeech.is_target])
    return calibration.with_thresholds(thresholds, default_threshold)


def with_snorm_features(artifact, features):
    """A copy of ``artifact`` whose scorer S-normalises only ``features`` (e.g. to fuse a raw
    feature); its calibrations are unchanged, so refit the fusion on it (``with_fusion``)."""
    snorm = artifact.scoring.get("snorm")
    if not snorm:
        raise ValueError("the artifact has no S-norm to change")
    return dataclasses.replace(artifact, scoring={**artifact.scoring, "snorm": {**snorm, "features": list(features)}})


def with_fusion(artifact, calibration: LogisticCalibration, *, name: str, record: dict, command: str = ""):
    """A copy of ``artifact`` under ``name`` whose pooled fused calibration is ``calibration``;
    ``record`` (what it was refitted on, how, its figures) is stored as ``config["fusion_refit"]``."""
    from nessa.artifact import utc_now

    if artifact.scoring.get("duration_bands"):
        raise ValueError("refitting per duration band is not written")
    if tuple(calibration.features) != fused_names(artifact):
        raise ValueError("the refitted calibration must use the artifact's fused features")
    scoring = {**artifact.scoring, "fused": calibration.to_dict()}
    config = {**artifact.config, "fusion_refit": {"from_artifact": artifact.name,
                                                  "from_artifact_sha256": artifact.sha256, **record}}
    return dataclasses.replace(artifact, name=name, scoring=scoring, config=config, command=command,
                               created_at=utc_now())


def save(artifact, out_dir) -> pathlib.Path:
    return artifact.save(out_dir)
