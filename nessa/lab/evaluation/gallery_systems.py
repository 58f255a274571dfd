"""Systems that adapt the alignment to each profile draw's gallery (``nessa eval --adapt``)."""
from __future__ import annotations

import numpy as np

from nessa.artifact import AlignmentArtifact
from nessa.lab.adapt import AdaptConfig, adapt_artifact
from nessa.lab.evaluation.embeddings import EvalEmbeddings
from nessa.lab.evaluation.systems import SecondsScorer, System, mean_vectors


def gallery_systems(artifact: AlignmentArtifact, data: EvalEmbeddings, config: AdaptConfig | dict | None = None,
                    suffix: str = "+adapted") -> list[System]:
    """Systems for the *profile* protocol: per draw, the alignment is adapted on that draw's
    enrollment utterances only (whole utterance + its crops, by both models), then used as
    ``<artifact><suffix>`` (cross) and ``<artifact><suffix>+fused``.

    The enrollment utterances are found by their full-length vectors in ``data``; their
    crops (``data.tests``) are the same audio. Do not use with the all-pairs protocol
    (every utterance is enrolled there, so the adaptation would see the test audio).
    """
    config = AdaptConfig.from_any(config)
    row_of = {np.asarray(v, np.float32).tobytes(): i for i, v in enumerate(data.enroll_full)}
    cache = {}

    def adapted_for(enroll_groups):
        rows = [row_of[np.asarray(v, np.float32).tobytes()] for g in enroll_groups for v in g]
        key = tuple(rows)
        if key not in cache:
            src = [data.runtime_full[rows]] + [r[rows] for _, r in data.tests.values()]
            tgt = [data.enroll_full[rows]] + [e[rows] for e, _ in data.tests.values()]
            spk = np.tile(data.speakers[rows], 1 + len(data.tests))
            cache[key] = adapt_artifact(artifact, np.concatenate(src), np.concatenate(tgt), spk, config=config)
        return cache[key]

    def build(fused: bool):
        def builder(enroll_groups, runtime_groups):
            scorer = adapted_for(enroll_groups).scorer
            profiles_e = mean_vectors(enroll_groups)
            profiles_r = mean_vectors(runtime_groups) if fused else None
            return SecondsScorer(lambda test_e, test_r, seconds: scorer.score_candidates(
                test_r, profiles_e, profiles_r, seconds=seconds)[0])
        return builder

    def threshold(fused: bool) -> float | None:
        try:
            return artifact.scorer.candidate_threshold(fused=fused)
        except (KeyError, ValueError):
            return None

    return [System(f"{artifact.name}{suffix}", build(False), threshold(False), protocols=("profile",)),
            System(f"{artifact.name}{suffix}+fused", build(True), threshold(True), protocols=("profile",))]
