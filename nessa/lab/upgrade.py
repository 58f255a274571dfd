"""The paper's model-upgrade experiment, on cached embeddings of an evaluation corpus.

Old system: the light model (GE2E, ``ge2e-256``) on both sides. New system: the stronger
model (CAM++, ``campplus-192``) on both sides. Two ways to get part of the new system's
accuracy without re-enrolling, measured on the all-pairs protocol of ``nessa eval``:

(a) **query upgrade, no re-enrollment**: profiles stay old (GE2E vectors); queries are
    embedded by the new model and mapped into the old space by an alignment trained in the
    reverse direction (source CAM++, target GE2E) on the training corpus, ridge or CCA
    chosen on held-out training speakers. Its fused variant also runs the old model on the
    query (old cosine + cross cosine, fusion weights from the same dev trials).
(b) **runtime-only / enrollment upgrade** (the shipped direction): profiles are enrolled
    with the new model (CAM++), queries come from the old light model (GE2E) through NESSA;
    fused = NESSA's calibrated fusion with the GE2E cosine (profiles keep a GE2E vector).

Gain recovered = ``(EER_old - EER_x) / (EER_old - EER_new)``, reported only where the
denominator is at least ``MIN_GAP`` EER points.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from nessa import metrics
from nessa.artifact import AlignmentArtifact
from nessa.kinds import KINDS
from nessa.lab.data import FileEmbeddings
from nessa.lab.learning_curve import all_pairs_eers, fit_alignment
from speechcore.embedder import l2_normalise

MIN_GAP = 0.5


def gain_recovered(eer_old: float, eer_new: float, eer_x: float, min_gap: float = MIN_GAP) -> float | None:
    gap = eer_old - eer_new
    if not np.isfinite(gap) or gap < min_gap:
        return None
    return float((eer_old - eer_x) / gap)


def swapped(files: Sequence[FileEmbeddings]) -> list[FileEmbeddings]:
    """The same paired chunks with source and target exchanged (to align CAM++ -> GE2E)."""
    return [dataclasses.replace(f, source=f.target, target=f.source) for f in files]


def reverse_alignment(files: Sequence[FileEmbeddings], methods=("ridge", "cca"), seed: int = 0):
    """Fit enrollment-model -> runtime-model alignments; pick the lowest dev cross EER."""
    reverse = swapped(files)
    speakers = sorted({f.speaker for f in reverse})
    fits = {m: fit_alignment(reverse, speakers, m, seed=seed) for m in methods}
    best = min(fits, key=lambda m: fits[m].dev_eer["cross"])
    return fits[best], {m: f.dev_eer for m, f in fits.items()}


def upgrade_experiment(files: Sequence[FileEmbeddings], data, artifact: AlignmentArtifact, seed: int = 0) -> dict:
    """EER % per condition for old / new / (a) / (a)+fused / (b) / (b)+fused, plus gains."""
    reverse, dev = reverse_alignment(files, seed=seed)
    kind, params = reverse.kind, {k: np.asarray(v, np.float64) for k, v in reverse.params.items()}

    def a_cross(ee, er, te, tr):  # CAM++ query -> GE2E space vs GE2E profile
        q = l2_normalise(KINDS[kind].transform_source(params, l2_normalise(te).astype(np.float64)))
        p = l2_normalise(KINDS[kind].transform_target(params, l2_normalise(er).astype(np.float64)))
        return q @ p.T

    systems = {
        "old: GE2E both sides": lambda ee, er, te, tr: l2_normalise(tr) @ l2_normalise(er).T,
        "new: CAM++ both sides": lambda ee, er, te, tr: l2_normalise(te) @ l2_normalise(ee).T,
        f"(a) CAM++ query → GE2E profile ({kind})": a_cross,
        "(a) + old-model fusion": lambda ee, er, te, tr: reverse.fusion.llr(
            l2_normalise(tr) @ l2_normalise(er).T, a_cross(ee, er, te, tr)),
    }
    eers = {name: all_pairs_eers(data, fn) for name, fn in systems.items()}
    # (b) as the service scores it (S-norm, features and duration bands where the artifact has them)
    eers[f"(b) GE2E query → CAM++ profile ({artifact.name})"] = _candidate_eers(data, artifact, fused=False)
    eers["(b) + fusion (shipped runtime score)"] = _candidate_eers(data, artifact, fused=True)
    old, new = eers["old: GE2E both sides"], eers["new: CAM++ both sides"]
    gains = {name: {c: gain_recovered(old[c], new[c], values[c]) for c in values}
             for name, values in eers.items()}
    return {"conditions": list(data.tests), "eer": eers, "gain": gains,
            "reverse_alignment": {"kind": kind, "hyper": reverse.hyper, "dev_eer_percent": dev}}


def _candidate_eers(data, artifact: AlignmentArtifact, fused: bool) -> dict:
    """All-pairs EER % per condition of the artifact's ``score_candidates`` (with each test's duration)."""
    n = len(data.speakers)
    same = data.speakers[:, None] == data.speakers[None, :]
    valid = ~np.eye(n, dtype=bool)
    out = {}
    for condition, (_, test_r) in data.tests.items():
        seconds = None if data.test_seconds is None else data.test_seconds.get(condition)
        scores, _ = artifact.scorer.score_candidates(test_r, data.enroll_full,
                                                     data.runtime_full if fused else None, seconds=seconds)
        out[condition] = 100 * metrics.equal_error_rate(scores[same & valid], scores[~same & valid])[0]
    return out


def markdown(result: dict) -> str:
    conditions = result["conditions"]
    head = "| system | " + " | ".join(f"EER {c}" for c in conditions) + " | " + \
        " | ".join(f"gain {c}" for c in conditions) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(conditions))]
    for name, values in result["eer"].items():
        gains = result["gain"][name]
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.2f}" for c in conditions) + " | " +
                     " | ".join("–" if gains[c] is None else f"{gains[c]:.2f}" for c in conditions) + " |")
    return "\n".join(lines)
