"""Same-words impostors (issue #12): which raw feature of the fused score carries the words.

For the ``same-words`` and ``speech-commands`` conditions of ``shift_protocol`` (same
speakers, same genuine trials; impostors who say the profile's very words vs other words),
every feature the artifact can fuse is computed per trial as the service computes it
(``scorer.score_features``: S-normalised against the stored cohort where the artifact says,
and raw), with the fused LLR and the alignment-only LLR. ``feature_table`` gives per half:
each feature's EER on both conditions and their ratio, and how far the same-words impostors
move the feature (and, for fused features, the LLR through its fusion weight) compared with
the different-words impostors, in units of the feature's genuine / impostor separation."""
from __future__ import annotations

import numpy as np

from nessa import metrics
from nessa.lab.evaluation.systems import mean_vectors

#: the conditions compared: (condition, reference)
PAIR = ("same-words", "speech-commands")


def condition_vectors(condition, vectors) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(profile enroll (M, d_e), profile runtime (M, d_r), tests runtime (N, d_r), test seconds (N,))."""
    profiles_e = mean_vectors([np.stack([vectors[i][0] for i in items]) for _, items in condition.profiles])
    profiles_r = mean_vectors([np.stack([vectors[i][1] for i in items]) for _, items in condition.profiles])
    tests_r = np.stack([vectors[item][1] for _, item in condition.tests])
    seconds = np.array([vectors[item][2] for _, item in condition.tests])
    return profiles_e, profiles_r, tests_r, seconds


def trial_features(artifact, condition, vectors) -> dict[str, np.ndarray]:
    """name -> per-trial values: every feature as scored (S-normalised where the artifact
    normalises it), ``<name> (raw)`` for the normalised ones, and the two LLRs."""
    scorer = artifact.scorer
    profiles_e, profiles_r, tests_r, seconds = condition_vectors(condition, vectors)
    prepared = scorer.prepare_candidates(profiles_e, profiles_r)
    scored = scorer.score_features(tests_r, prepared)
    raw_prepared = {key: value for key, value in prepared.items() if key != "snorm"}
    raw = scorer.score_features(tests_r, raw_prepared)
    t, p = condition.trials[:, 0], condition.trials[:, 1]
    out = {name: values[t, p] for name, values in scored.items()}
    for name in (artifact.scoring.get("snorm") or {}).get("features", []):
        if name in raw:
            out[f"{name} (raw)"] = raw[name][t, p]
    out["fused LLR"] = scorer.score_candidates(tests_r, profiles_e, profiles_r, seconds=seconds)[0][t, p]
    out["alignment LLR"] = scorer.score_candidates(tests_r, profiles_e, None, seconds=seconds)[0][t, p]
    return out


def fusion_weights(artifact) -> dict[str, float]:
    """fused feature -> its weight in the artifact's pooled fused calibration."""
    calibration = artifact.scorer.bands.pooled(True)
    return dict(zip(calibration.features, calibration.weights))


def _eer(targets: np.ndarray, nontargets: np.ndarray) -> float:
    return 100.0 * metrics.equal_error_rate(targets, nontargets)[0]


def feature_table(artifact, conditions: dict, vectors, half: str = "dev") -> list[dict]:
    """One row per feature on ``half``: EER on each of ``PAIR`` and the ratio; ``shift``: the
    mean same-words impostor score minus the mean different-words impostor score, over the
    reference's genuine-minus-impostor mean gap (1.0: same-words impostors score like
    genuine trials on average); ``llr_shift``: that mean move times the fusion weight."""
    same, other = (conditions[name] for name in PAIR)
    f_same, f_other = trial_features(artifact, same, vectors), trial_features(artifact, other, vectors)
    m_same, m_other = same.half == half, other.half == half
    weights = fusion_weights(artifact)
    rows = []
    for name in f_same:
        s, o = f_same[name][m_same], f_other[name][m_other]
        st, sn = s[same.is_target[m_same]], s[~same.is_target[m_same]]
        ot, on = o[other.is_target[m_other]], o[~other.is_target[m_other]]
        move = float(np.mean(sn) - np.mean(on))
        eer_same, eer_other = _eer(st, sn), _eer(ot, on)
        rows.append({"feature": name, "half": half, "eer_same_words": eer_same, "eer_other_words": eer_other,
                     "ratio": eer_same / eer_other if eer_other > 0 else float("inf"),
                     "impostor_mean_move": move, "shift": move / float(np.mean(ot) - np.mean(on)),
                     "fusion_weight": weights.get(name), "llr_shift": move * weights[name] if name in weights else None,
                     "n_target": int(len(st)), "n_same_words_impostors": int(len(sn)),
                     "n_other_words_impostors": int(len(on))})
    return rows


def feature_markdown(rows: list[dict]) -> str:
    def cell(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ["| feature | half | EER same-words | EER other words | ratio | impostor move / genuine gap | "
             "fusion weight | LLR move of same-words impostors |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['feature']} | {r['half']} | {cell(r['eer_same_words'])} | {cell(r['eer_other_words'])} "
                     f"| {cell(r['ratio'])} | {cell(r['shift'])} | {cell(r['fusion_weight'], 3)} | "
                     f"{cell(r['llr_shift'])} |")
    return "\n".join(lines)
