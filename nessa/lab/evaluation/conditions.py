"""How the test side is presented: full length or a seeded crop of its speech, clean or
with additive noise at a given SNR (the enrollment side always stays clean and full length)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from typing import Sequence

import numpy as np

DEFAULT_CROPS = (2.0, 1.0)


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    kind: str  # "white" or "babble"
    snr_db: float

    def __post_init__(self):
        if self.kind not in ("white", "babble"):
            raise ValueError(f"noise kind must be 'white' or 'babble', got {self.kind!r}")

    @property
    def tag(self) -> str:
        return f"{self.kind}{self.snr_db:g}dB"


@dataclasses.dataclass(frozen=True)
class Condition:
    """How the test side is presented: full length or a crop (seconds), clean or noisy."""

    crop_seconds: float | None = None
    noise: NoiseSpec | None = None

    @property
    def name(self) -> str:
        base = "full" if self.crop_seconds is None else f"{self.crop_seconds:g}s"
        return base if self.noise is None else f"{base}+{self.noise.tag}"


def make_conditions(crops: Sequence[float], noise: NoiseSpec | None) -> list[Condition]:
    lengths = [None] + sorted({float(c) for c in crops}, reverse=True)
    return [Condition(length, noise) for length in lengths]


def _crop_rng(seed: int, speaker: str, path: str, seconds: float) -> np.random.Generator:
    identity = hashlib.sha256(f"{speaker}/{pathlib.Path(path).name}/{seconds:g}".encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(identity[:8], "little")])


def crop_bounds(n_samples: int, sample_rate: int, crops: Sequence[float], seed: int, speaker: str,
                path: str) -> np.ndarray:
    """(1 + len(crops), 2) sample bounds: the whole speech, then one seeded crop per length
    (the whole speech when it is shorter than the crop)."""
    bounds = [(0, n_samples)]
    for seconds in crops:
        window = int(round(seconds * sample_rate))
        if window >= n_samples:
            bounds.append((0, n_samples))
            continue
        offset = int(_crop_rng(seed, speaker, path, seconds).integers(0, n_samples - window + 1))
        bounds.append((offset, offset + window))
    return np.asarray(bounds, dtype=np.int64)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with g chosen so that 10 log10(P_speech / P_noise) = snr_db."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)[:len(speech)]
    p_speech, p_noise = np.mean(speech ** 2), np.mean(noise ** 2)
    if p_speech <= 0 or p_noise <= 0:
        return speech.astype(np.float32)
    gain = math.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)
