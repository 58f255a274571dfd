"""Measuring a fusion refitted with same-words negatives (``nessa.lab.fusion_refit``) on the
dev half without scoring a trial with a fit that saw its speakers: the dev speakers of
Speech Commands and of the LibriSpeech calibration trials are split into ``FOLDS`` folds
(by a hash of the speaker, as ``shift_protocol.split_halves``); each fold's trials are scored
by the fusion refitted on the other folds' trials (``within``: profile and test speakers both
in the other folds). Reported per setting: EERs of the pooled cross-fitted LLRs on the
dev ``speech-commands`` and ``same-words`` trials whose profile *and* test speakers share a
fold (the other trials pair a speaker with one the fit saw), and on the LibriSpeech dev
trials; with the artifact's shipped fusion on exactly the same trials."""
from __future__ import annotations

import hashlib

import numpy as np

from nessa import metrics
from nessa.lab.fusion_refit import TrialSet, refit_fusion

FOLDS = 2
#: the settings compared: (Speech Commands' share of each class, same-words share of its non-targets)
GRID = ((0.5, 0.0), (0.25, 0.5), (0.5, 0.25), (0.5, 0.5), (0.5, 0.75))


def speaker_folds(speakers, folds: int = FOLDS, tag: str = "same-words-folds") -> dict[str, int]:
    order = sorted(set(speakers), key=lambda s: (hashlib.sha256(f"{tag}/{s}".encode()).hexdigest(), s))
    return {speaker: i % folds for i, speaker in enumerate(order)}


def _eer(llr: np.ndarray, is_target: np.ndarray) -> float:
    return 100.0 * metrics.equal_error_rate(llr[is_target], llr[~is_target])[0]


def within_fold(trials: TrialSet, fold_of: dict[str, int]) -> np.ndarray:
    return np.array([fold_of[p] == fold_of[t] for p, t in zip(trials.profile_speaker, trials.test_speaker)])


def crossfit_llr(librispeech: TrialSet, commands: TrialSet, fold_of: dict[str, int], *, domain_weight: float,
                 same_words_weight: float, prior: float = 0.5) -> tuple[np.ndarray, np.ndarray, list]:
    """(LibriSpeech LLRs, Speech Commands LLRs, the per-fold calibrations): every trial whose
    profile speaker is in fold k scored by the fusion fitted on the other folds' trials."""
    out = [np.full(len(s.is_target), np.nan) for s in (librispeech, commands)]
    fits = []
    for k in sorted(set(fold_of.values())):
        train = {s for s, f in fold_of.items() if f != k}
        calibration = refit_fusion(librispeech.within(train), commands.within(train), domain_weight=domain_weight,
                                   same_words_weight=same_words_weight, prior=prior)
        fits.append(calibration.to_dict())
        for llr, trials in zip(out, (librispeech, commands)):
            rows = np.array([fold_of[p] == k for p in trials.profile_speaker])
            llr[rows] = calibration.llr(*trials.features[rows].T)
    return out[0], out[1], fits


def figures(librispeech: TrialSet, commands: TrialSet, libri_llr: np.ndarray, commands_llr: np.ndarray,
            fold_of: dict[str, int]) -> dict:
    """EERs (%) on the same-fold trials: LibriSpeech dev, speech-commands (other-words
    impostors), same-words (same-words impostors), and the same-words / other-words ratio."""
    lib = within_fold(librispeech, fold_of)
    sc = within_fold(commands, fold_of)
    other = sc & ~commands.same_words
    same = sc & (commands.is_target | commands.same_words)
    row = {"librispeech_dev": _eer(libri_llr[lib], librispeech.is_target[lib]),
           "speech_commands": _eer(commands_llr[other], commands.is_target[other]),
           "same_words": _eer(commands_llr[same], commands.is_target[same]),
           "n": {"librispeech": [int(librispeech.is_target[lib].sum()), int((~librispeech.is_target[lib]).sum())],
                 "speech_commands": [int(commands.is_target[other].sum()), int((~commands.is_target[other]).sum())],
                 "same_words": [int(commands.is_target[same].sum()), int(commands.same_words[same].sum())]}}
    row["ratio"] = row["same_words"] / row["speech_commands"] if row["speech_commands"] > 0 else float("inf")
    return row


def compare(artifact, librispeech: TrialSet, commands: TrialSet, grid=GRID) -> list[dict]:
    """The shipped fusion, the light model alone (its S-normalised GE2E cosine) and every
    ``grid`` setting, on the same cross-fitted dev trials."""
    fold_of = speaker_folds(list(librispeech.profile_speaker) + list(commands.profile_speaker)
                            + list(commands.test_speaker) + list(librispeech.test_speaker))
    shipped = artifact.scorer.bands.pooled(True)
    rows = [{"setting": "shipped fusion", **figures(librispeech, commands, shipped.llr(*librispeech.features.T),
                                                    shipped.llr(*commands.features.T), fold_of)}]
    if "runtime_cosine" in librispeech.names:
        i = librispeech.names.index("runtime_cosine")
        rows.append({"setting": "light model alone (runtime_cosine)",
                     **figures(librispeech, commands, librispeech.features[:, i], commands.features[:, i], fold_of)})
    for domain_weight, same_words_weight in grid:
        libri_llr, commands_llr, fits = crossfit_llr(librispeech, commands, fold_of, domain_weight=domain_weight,
                                                     same_words_weight=same_words_weight)
        rows.append({"setting": f"refit sc={domain_weight:g} same-words={same_words_weight:g}",
                     "domain_weight": domain_weight, "same_words_weight": same_words_weight, "fits": fits,
                     **figures(librispeech, commands, libri_llr, commands_llr, fold_of)})
    return rows


def compare_markdown(rows: list[dict]) -> str:
    lines = ["| setting | LibriSpeech dev EER | speech-commands EER | same-words EER | ratio | weights (fold 1) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        weights = ", ".join(f"{w:.3g}" for w in r["fits"][0]["weights"]) if r.get("fits") else "–"
        lines.append(f"| {r['setting']} | {r['librispeech_dev']:.2f} | {r['speech_commands']:.2f} | "
                     f"{r['same_words']:.2f} | {r['ratio']:.2f} | {weights} |")
    n = rows[0]["n"]
    lines += ["", "Trials (target / non-target), same-fold only: " + "; ".join(f"{k} {v[0]} / {v[1]}"
                                                                            for k, v in n.items())]
    return "\n".join(lines)
