"""Scoring systems: what `nessa eval` compares, each built from the enrolled entities'
embeddings into a scorer of test embeddings."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from nessa.artifact import AlignmentArtifact
from speechcore.embedder import l2_normalise

PROTOCOLS = ("all_pairs", "profile")


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


def mean_vectors(groups: list[np.ndarray]) -> np.ndarray:
    return l2_normalise(np.stack([np.asarray(g, dtype=np.float32).mean(axis=0) for g in groups]))


def symmetric_system(name: str, use_enroll_model: bool) -> System:
    def build(enroll_groups, runtime_groups):
        profiles = mean_vectors(enroll_groups if use_enroll_model else runtime_groups)
        if use_enroll_model:
            return lambda test_e, test_r: l2_normalise(test_e) @ profiles.T
        return lambda test_e, test_r: l2_normalise(test_r) @ profiles.T

    return System(name, build, asymmetric=False)


class SecondsScorer:
    """A scorer that also takes the test segments' speech durations (``seconds``, (N,) or None)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, test_e, test_r, seconds=None):
        return self.fn(test_e, test_r, seconds)


def artifact_systems(artifact: AlignmentArtifact) -> list[System]:
    """``<name>``: profiles without a runtime vector (calibrated cross-model LLR);
    ``<name>+fused``: profiles with one (runtime + cross fusion LLR). Scored as the service
    scores them, through ``score_candidates`` (with S-norm against the stored cohort and
    duration bands where the artifact's ``scoring`` has them) with the test segments'
    durations."""
    scorer = artifact.scorer

    def build(fused: bool):
        def builder(enroll_groups, runtime_groups):
            profiles_e = mean_vectors(enroll_groups)
            profiles_r = mean_vectors(runtime_groups) if fused else None
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
