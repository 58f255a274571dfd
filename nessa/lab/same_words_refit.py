"""Build the same-words fusion refit of an artifact (issue #12), end to end, on the dev half:

1. the artifact's LibriSpeech calibration trials (its first ``max_librispeech_speakers``
   recorded dev speakers of train-clean-100, chunked as it was trained);
2. the ``speech-commands`` / ``same-words`` trials of ``shift_protocol`` among the **dev**
   half's Speech Commands speakers only (the test half is never read);
3. the cross-fitted dev comparison (``same_words_remedy.compare``) of the shipped fusion and
   the chosen setting, stored with the artifact;
4. the fusion refitted on all of those trials, saved as a new artifact (a copy of the input
   with only ``scoring["fused"]`` replaced and ``config["fusion_refit"]`` describing how).

Run it with the installed models, e.g.::

    .venv/bin/python -c "from app.model_catalog import load_embedder as m; \\
      from nessa.lab.same_words_refit import build; \\
      build(m('campplus-192'), m('ge2e-256'), 'nessa/artifacts/nessa-twotower-cca-ge2e256-to-campplus192-v3', \\
            '../shared/data', 'var/cache/embeddings', 'nessa/artifacts/candidates', \\
            'nessa-twotower-cca-ge2e256-to-campplus192-v4-samewords')"
"""
from __future__ import annotations

import pathlib

from nessa.artifact import AlignmentArtifact
from nessa.lab import fusion_refit
from nessa.lab.data import describe_utterances
from nessa.lab.evaluation import same_words_remedy as remedy
from nessa.lab.evaluation.shift_eval import ShiftEmbedder
from nessa.lab.evaluation.shift_protocol import speech_commands_clips, speech_commands_conditions, split_halves

#: the setting chosen on the cross-fitted dev comparison (docs: var/sections/same-words.md)
DOMAIN_WEIGHT, SAME_WORDS_WEIGHT = 0.5, 0.9
MAX_LIBRISPEECH_SPEAKERS = 20


def dev_trial_sets(artifact, enroll, runtime, shared_dir, cache_dir, max_librispeech_speakers: int):
    """(LibriSpeech TrialSet, dev-half Speech Commands TrialSet, dev SC speakers, data description)."""
    shared_dir = pathlib.Path(shared_dir)
    trials = fusion_refit.librispeech_dev_trials(artifact, runtime, enroll, shared_dir / "librispeech" / "train-clean-100",
                                                 cache_dir, max_speakers=max_librispeech_speakers)
    librispeech = fusion_refit.dev_trial_set(artifact, trials)
    clips = speech_commands_clips(shared_dir / "speech-commands")
    halves = split_halves(list(clips), "speech-commands")
    dev = {speaker for speaker, half in halves.items() if half == "dev"}
    dev_conditions = {c.name: _restrict(c, dev) for c in speech_commands_conditions(shared_dir, 0)}
    embedder = ShiftEmbedder(enroll, runtime, cache_dir, progress=False)
    for condition in dev_conditions.values():
        embedder.embed(condition.items())
    commands = fusion_refit.speech_commands_trial_set(artifact, dev_conditions, embedder.vectors).within(dev)
    used = sorted({(s, p) for c in dev_conditions.values() for _, items in c.profiles for i in items
                   for p in i.sources for s in [pathlib.Path(p).parent.name]}
                  | {(s, p) for c in dev_conditions.values() for s, i in c.tests for p in i.sources})
    description, sha = describe_utterances(used)
    return librispeech, commands, sorted(dev), {"speech_commands": description, "speech_commands_sha256": sha,
                                                "librispeech_dev_speakers": sorted(set(librispeech.profile_speaker))}


def _restrict(condition, speakers: set):
    """The condition with only the profiles, tests and trials of ``speakers``."""
    import dataclasses

    import numpy as np

    profiles = [p for p, (s, _) in enumerate(condition.profiles) if s in speakers]
    tests = [t for t, (s, _) in enumerate(condition.tests) if s in speakers]
    p_new, t_new = {p: i for i, p in enumerate(profiles)}, {t: i for i, t in enumerate(tests)}
    keep = np.array([t in t_new and p in p_new for t, p in condition.trials], dtype=bool)
    trials = np.array([(t_new[t], p_new[p]) for t, p in condition.trials[keep]], dtype=np.int64).reshape(-1, 2)
    return dataclasses.replace(condition, profiles=[condition.profiles[p] for p in profiles],
                               tests=[condition.tests[t] for t in tests], trials=trials,
                               is_target=condition.is_target[keep], half=condition.half[keep])


def build(enroll, runtime, artifact_dir, shared_dir, cache_dir, out_dir, name: str, *,
          domain_weight: float = DOMAIN_WEIGHT, same_words_weight: float = SAME_WORDS_WEIGHT,
          max_librispeech_speakers: int = MAX_LIBRISPEECH_SPEAKERS, command: str = "") -> AlignmentArtifact:
    artifact = AlignmentArtifact.load(artifact_dir)
    librispeech, commands, dev, data = dev_trial_sets(artifact, enroll, runtime, shared_dir, cache_dir,
                                                      max_librispeech_speakers)
    comparison = remedy.compare(artifact, librispeech, commands, ((domain_weight, same_words_weight),))
    calibration = fusion_refit.refit_fusion(librispeech, commands, domain_weight=domain_weight,
                                            same_words_weight=same_words_weight)
    record = {"method": "fused calibration refitted with same-words, different-speaker negatives "
                        "(nessa.lab.fusion_refit)",
              "domain_weight": domain_weight, "same_words_weight": same_words_weight,
              "speech_commands_speakers": dev, "speech_commands_half": "dev", "data": data,
              "trials": {"librispeech": [int(librispeech.is_target.sum()), int((~librispeech.is_target).sum())],
                         "speech_commands": [int(commands.is_target.sum()),
                                             int((~commands.is_target & ~commands.same_words).sum()),
                                             int(commands.same_words.sum())]},
              "crossfit_dev_eer_percent": [{k: v for k, v in row.items() if k != "fits"} for row in comparison],
              "shipped_fused": artifact.scoring["fused"]}
    new = fusion_refit.with_fusion(artifact, calibration, name=name, record=record, command=command or (
        f"nessa.lab.same_words_refit.build(..., domain_weight={domain_weight}, "
        f"same_words_weight={same_words_weight}, max_librispeech_speakers={max_librispeech_speakers})"))
    new.save(out_dir)
    return new


#: the raw-tower variant: the fused features S-normalised (``cross_cosine_tower`` left raw)
RAW_TOWER_SNORM = ("runtime_cosine", "cross_cosine")


def build_raw_tower(enroll, runtime, artifact_dir, shared_dir, cache_dir, out_dir, name: str, *,
                    max_librispeech_speakers: int = MAX_LIBRISPEECH_SPEAKERS) -> AlignmentArtifact:
    """The diagnosis' variant: ``cross_cosine_tower`` fused **raw** (the LibriSpeech-cohort
    S-norm made it content-sensitive on Speech Commands), the fusion refitted on the artifact's
    LibriSpeech calibration trials alone (no Speech Commands trial is used, so its Speech
    Commands figures are out of sample). The alignment path is unchanged."""
    artifact = AlignmentArtifact.load(artifact_dir)
    probe = fusion_refit.with_snorm_features(artifact, RAW_TOWER_SNORM)
    trials = fusion_refit.librispeech_dev_trials(probe, runtime, enroll,
                                                 pathlib.Path(shared_dir) / "librispeech" / "train-clean-100",
                                                 cache_dir, max_speakers=max_librispeech_speakers)
    librispeech = fusion_refit.dev_trial_set(probe, trials)
    calibration = fusion_refit.refit_fusion(librispeech, librispeech.select(librispeech.is_target[:0]),
                                            domain_weight=0.0, same_words_weight=0.0)
    record = {"method": "fused calibration refitted with cross_cosine_tower raw (not S-normalised), "
                        "on the LibriSpeech calibration trials alone (nessa.lab.same_words_refit.build_raw_tower)",
              "source_artifact_sha256": artifact.sha256, "snorm_features_before": artifact.scoring["snorm"]["features"],
              "snorm_features": list(RAW_TOWER_SNORM),
              "librispeech_dev_speakers": sorted(set(librispeech.profile_speaker)),
              "trials": {"librispeech": [int(librispeech.is_target.sum()), int((~librispeech.is_target).sum())]},
              "shipped_fused": artifact.scoring["fused"]}
    new = fusion_refit.with_fusion(probe, calibration, name=name, record=record, command=(
        f"nessa.lab.same_words_refit.build_raw_tower(..., max_librispeech_speakers={max_librispeech_speakers})"))
    new.save(out_dir)
    return new
