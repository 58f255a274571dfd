"""Channel transforms of the domain-shift evaluation (``nessa eval-shift``): what happens to
speech between the talker and the service, simulated on 16 kHz audio, deterministically.

* ``telephone``: down to 8 kHz, band-pass 300-3400 Hz (Butterworth, order 6, causal as a
  handset's send filter), G.711 mu-law (8-bit codes, the standard's segmented encoder and
  decoder), back up to 16 kHz for the models;
* ``add_babble``: 3-5 other talkers summed at equal level, added at a given SNR;
* ``reverberate``: convolution with a synthetic room impulse response (a direct path plus an
  exponentially decaying noise tail of a stated RT60 and direct-to-reverberant ratio).
"""
from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_FILTER_ORDER = 6
#: G.711 mu-law: bias added to the 14-bit magnitude, and the largest magnitude encoded
MULAW_BIAS, MULAW_CLIP = 0x84, 32635
#: 60 dB of energy decay: exp(-RT60_DECAY * t / rt60) is the energy envelope
RT60_DECAY = 6.0 * math.log(10.0)


# ----------------------------------------------------------------------------- telephone
def mulaw_encode(samples: np.ndarray) -> np.ndarray:
    """G.711 mu-law codes (uint8) of 16-bit linear samples (int16, or floats in [-1, 1])."""
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        samples = np.round(np.clip(samples, -1.0, 1.0) * 32767.0)
    linear = samples.astype(np.int32)
    sign = np.where(linear < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(linear), MULAW_CLIP) + MULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7  # segment 0..7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """16-bit linear samples (int16) of G.711 mu-law codes."""
    codes = ~np.asarray(codes, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + MULAW_BIAS) << exponent
    linear = magnitude - MULAW_BIAS
    return np.where(codes & 0x80, -linear, linear).astype(np.int16)


def _bandpass_sos():
    from scipy.signal import butter

    return butter(TELEPHONE_FILTER_ORDER, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")


def telephone_narrowband(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The 8 kHz signal the far end decodes, as floats in [-1, 1): every value is a G.711
    mu-law level (/ 32768)."""
    from scipy.signal import resample_poly, sosfilt

    wav = np.asarray(wav, dtype=np.float64)
    g = math.gcd(int(sample_rate), TELEPHONE_RATE)
    narrow = resample_poly(wav, TELEPHONE_RATE // g, int(sample_rate) // g)
    narrow = sosfilt(_bandpass_sos(), narrow)
    return mulaw_decode(mulaw_encode(narrow)).astype(np.float64) / 32768.0


def telephone(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wav`` through a narrowband telephone channel, back at ``sample_rate`` (float32)."""
    from scipy.signal import resample_poly

    narrow = telephone_narrowband(wav, sample_rate)
    g = math.gcd(int(sample_rate), TELEPHONE_RATE)
    wide = resample_poly(narrow, int(sample_rate) // g, TELEPHONE_RATE // g)
    return wide[:len(wav)].astype(np.float32)


# ----------------------------------------------------------------------------- babble
def power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def babble(talkers: list[np.ndarray], n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The talkers (each tiled to length, from a seeded offset) summed at equal power."""
    out = np.zeros(n_samples)
    for talker in talkers:
        talker = np.asarray(talker, dtype=np.float64)
        if len(talker) == 0 or power(talker) <= 0:
            continue
        tiled = np.tile(talker, n_samples // len(talker) + 2)
        start = int(rng.integers(0, len(tiled) - n_samples))
        piece = tiled[start:start + n_samples]
        out += piece / max(math.sqrt(power(piece)), 1e-12)
    return out


def add_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with g such that 10 log10(P(speech) / P(g * noise)) = snr_db
    (powers over the whole of ``speech``)."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)[:len(speech)]
    if power(speech) <= 0 or power(noise) <= 0:
        return speech.astype(np.float32)
    gain = math.sqrt(power(speech) / (power(noise) * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)


def add_babble(speech: np.ndarray, talkers: list[np.ndarray], snr_db: float, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return add_at_snr(speech, babble(talkers, len(speech), rng), snr_db)


# ----------------------------------------------------------------------------- reverberation
def synthetic_rir(rt60: float, seed, *, drr_db: float = 0.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A room impulse response: a unit direct path, then (from 1 ms) Gaussian noise under an
    energy envelope exp(-6 ln10 t / rt60) (60 dB down after ``rt60`` s), ``rt60`` s long in
    all, the tail scaled so that direct / tail energy is ``drr_db``."""
    rng = np.random.default_rng(seed)
    n = int(round(rt60 * sample_rate))
    start = int(round(0.001 * sample_rate))
    t = np.arange(n - start) / sample_rate
    tail = rng.standard_normal(n - start) * np.exp(-0.5 * RT60_DECAY * t / rt60)
    tail *= math.sqrt(1.0 / (np.sum(tail ** 2) * 10.0 ** (drr_db / 10.0)))
    rir = np.zeros(n)
    rir[0] = 1.0
    rir[start:] = tail
    return rir


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``speech`` convolved with ``rir`` (cut to the input's length), at the input's power."""
    from scipy.signal import fftconvolve

    speech = np.asarray(speech, dtype=np.float64)
    wet = fftconvolve(speech, rir)[:len(speech)]
    if power(wet) > 0:
        wet *= math.sqrt(power(speech) / power(wet))
    return wet.astype(np.float32)


def estimate_rt60(rir: np.ndarray, sample_rate: int = SAMPLE_RATE, fit_db: tuple = (-5.0, -25.0)) -> float:
    """RT60 from Schroeder backward integration: the slope of the energy decay curve
    between ``fit_db`` levels (T20), extrapolated to 60 dB."""
    energy = np.cumsum(np.asarray(rir, dtype=np.float64)[::-1] ** 2)[::-1]
    curve = 10.0 * np.log10(energy / energy[0] + 1e-300)
    rows = np.flatnonzero((curve <= fit_db[0]) & (curve >= fit_db[1]))
    slope = np.polyfit(rows / sample_rate, curve[rows], 1)[0]  # dB per second
    return -60.0 / slope
