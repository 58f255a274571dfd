"""Query and profile quality for the domain-shift evaluation (issue #12; research code, opt-in
through ``nessa eval-shift --methods quality-...``; the service does not use it).

**The estimator** (of the audio as the service receives it, 16 kHz, before VAD; no model):

* ``snr_db``: a percentile SNR. Frame energies (25 ms frames, 10 ms hop) in dB; the speech
  level is their 95th percentile, the noise floor their 10th; the estimate is the difference,
  capped at ``SNR_CAP_DB``. Speech is intermittent, so its quiet frames show the floor:
  added babble or noise lifts the floor, a reverberant tail fills the pauses. It is a rank
  measure (5 dB babble < 10 dB babble < clean), not a calibrated SNR.
* ``hf_db``: the share of the signal's energy above ``HF_CUT_HZ`` (3.6 kHz), in dB
  (10 log10 of the ratio). Wideband speech keeps -30 dB or more up there; a telephone
  channel (300-3400 Hz band-pass at 8 kHz) leaves almost nothing, so ``hf_db < NB_DB`` marks
  narrowband audio.
* the speech seconds Silero VAD keeps (from the embedding cache).

**The quality classes**: an item is ``nb`` (narrowband), else ``noisy`` (``snr_db <
SNR_CLEAN_DB``) or ``clean``; with ``-short`` when its speech lasts under ``SHORT_SECONDS``
(``-nodur`` methods leave duration out). A trial's **bin** is ``<profile class>|<query
class>`` (a profile's quality: the mean of its enrollment items' ``snr_db`` / ``hf_db``, the
sum of their seconds).

**The maps** (``quality-shift`` / ``quality-refit``): fitted on LibriSpeech train-clean-100
trials with simulated degradations (``shift_quality_train``; never the evaluation's trials).
Per scoring path and bin, a Gaussian of the bin's non-target LLRs is mapped onto the
``clean|clean`` bin's (``refit``: mean and sd, i.e. the same 1 % and 0.1 % tail points;
``shift``: bias only, matched at the 1 % point). Referring to the clean training bin rather
than to the stored thresholds cancels whatever is particular to the training speakers (they
are the artifact's S-norm cohort), so a clean trial keeps the shipped LLR. A bin with fewer
than ``MIN_BIN_NONTARGETS`` training non-targets keeps the shipped LLR.
"""
from __future__ import annotations

import re
import statistics

import numpy as np

SAMPLE_RATE = 16000
FRAME, HOP = 400, 160
NOISE_PERCENTILE, SPEECH_PERCENTILE = 10.0, 95.0
SNR_CAP_DB = 60.0
HF_CUT_HZ = 3600.0
#: below this share of energy above HF_CUT_HZ (dB) audio counts as narrowband
NB_DB = -35.0
#: percentile SNR under this is "noisy": between babble 10 dB queries' 90th percentile (20.5) and clean
#: queries' 10th (25.3) on the train-clean-100 training items (chosen there, not on the evaluation)
SNR_CLEAN_DB = 22.0
#: speech seconds under this is "short" (the service's enrollment minimum is 3 s)
SHORT_SECONDS = 3.0
MIN_BIN_NONTARGETS = 200
REFERENCE_BIN = "clean|clean"
_METHOD = re.compile(r"^quality-(shift|refit)(-nodur)?$")
METHOD_NAMES = ("quality-shift", "quality-refit", "quality-shift-nodur", "quality-refit-nodur")


# ----------------------------------------------------------------------------- the estimator
def frame_energies_db(wav: np.ndarray) -> np.ndarray:
    """Mean-square energy (dB) of 25 ms frames every 10 ms (one frame for shorter audio)."""
    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) < FRAME:
        wav = np.pad(wav, (0, FRAME - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, FRAME)[::HOP]
    return 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def snr_db(wav: np.ndarray) -> float:
    """The percentile SNR estimate (dB): 95th minus 10th percentile of frame energies."""
    energies = frame_energies_db(wav)
    spread = np.percentile(energies, SPEECH_PERCENTILE) - np.percentile(energies, NOISE_PERCENTILE)
    return float(min(spread, SNR_CAP_DB))


def hf_db(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """10 log10(energy above HF_CUT_HZ / total energy) (-120 for silence)."""
    wav = np.asarray(wav, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(wav - wav.mean())) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1.0 / sample_rate)
    total = float(spectrum.sum())
    if total <= 0:
        return -120.0
    return float(10.0 * np.log10(max(float(spectrum[freqs > HF_CUT_HZ].sum()) / total, 1e-12)))


def estimate(wav: np.ndarray) -> dict:
    return {"snr_db": round(snr_db(wav), 3), "hf_db": round(hf_db(wav), 3)}


# ----------------------------------------------------------------------------- classes and bins
def quality_class(snr: float, hf: float, seconds: float, duration: bool = True) -> str:
    band = "nb" if hf < NB_DB else ("noisy" if snr < SNR_CLEAN_DB else "clean")
    return band + ("-short" if duration and seconds < SHORT_SECONDS else "")


def profile_quality(items_quality: list[dict], items_seconds: list[float]) -> tuple[float, float, float]:
    """(snr_db, hf_db, seconds) of a profile: the mean of its items' estimates, their seconds summed."""
    return (float(np.mean([q["snr_db"] for q in items_quality])), float(np.mean([q["hf_db"] for q in items_quality])),
            float(np.sum(items_seconds)))


def trial_bins(profile_q: np.ndarray, query_q: np.ndarray, duration: bool = True) -> np.ndarray:
    """``<profile class>|<query class>`` per trial; ``*_q``: (n, 3) rows (snr_db, hf_db, seconds)."""
    return np.array([f"{quality_class(*p, duration=duration)}|{quality_class(*q, duration=duration)}"
                     for p, q in zip(profile_q, query_q)])


# ----------------------------------------------------------------------------- the maps
def fit_bin_maps(llr: np.ndarray, is_target: np.ndarray, bins: np.ndarray, kind: str) -> dict:
    """bin -> (scale, bias) mapping the bin's non-target Gaussian onto the reference bin's;
    {} when the reference bin is too small."""
    nontarget = ~np.asarray(is_target, dtype=bool)
    stats = {}
    for key in np.unique(bins):
        values = llr[nontarget & (bins == key)]
        if len(values) >= MIN_BIN_NONTARGETS:
            stats[str(key)] = (float(np.mean(values)), float(np.std(values, ddof=1)), int(len(values)))
    if REFERENCE_BIN not in stats:
        return {}
    mu0, sd0, _ = stats[REFERENCE_BIN]
    z = statistics.NormalDist().inv_cdf(0.99)
    maps = {}
    for key, (mu, sd, n) in stats.items():
        if kind == "refit":
            scale = sd0 / sd
            maps[key] = {"scale": scale, "bias": mu0 - scale * mu, "n_nontargets": n}
        elif kind == "shift":
            maps[key] = {"scale": 1.0, "bias": (mu0 + z * sd0) - (mu + z * sd), "n_nontargets": n}
        else:
            raise ValueError(f"unknown map kind {kind!r}: shift or refit")
    return maps


def apply_maps(llr: np.ndarray, bins: np.ndarray, maps: dict) -> np.ndarray:
    """``scale * llr + bias`` of each trial's bin (the shipped LLR where its bin has no map)."""
    out = np.asarray(llr, dtype=np.float64).copy()
    for key, fit in maps.items():
        rows = bins == key
        out[rows] = fit["scale"] * out[rows] + fit["bias"]
    return out


def parse_method(method: str) -> tuple[str, bool] | None:
    """(map kind, with duration?) of a ``quality-...`` name, or None."""
    match = _METHOD.match(method)
    return None if not match else (match.group(1), match.group(2) is None)


def condition_quality(condition, vectors, item_quality: dict) -> tuple[np.ndarray, np.ndarray]:
    """((n_trials, 3) profile quality, (n_trials, 3) query quality) of a condition's trials."""
    profiles = np.array([profile_quality([item_quality[i] for i in items], [vectors[i][2] for i in items])
                         for _, items in condition.profiles])
    tests = np.array([(item_quality[item]["snr_db"], item_quality[item]["hf_db"], vectors[item][2])
                      for _, item in condition.tests])
    return profiles[condition.trials[:, 1]], tests[condition.trials[:, 0]]


def adjust(method: str, base_llr: np.ndarray, condition, vectors, fused: bool, context: dict) -> np.ndarray:
    """The shipped per-trial LLRs of ``condition`` through the quality map of ``method``
    (``context``: ``item_quality`` and the training trials, from ``shift_quality_train``)."""
    kind, duration = parse_method(method)
    profile_q, query_q = condition_quality(condition, vectors, context["item_quality"])
    maps = context["maps"][(kind, duration, "fused" if fused else "alignment")]
    return apply_maps(base_llr, trial_bins(profile_q, query_q, duration), maps)
