"""Polyphase resampling: whole signals, or streamed block by block while decoding.

The streamed result equals ``scipy.signal.resample_poly`` applied to the whole signal (same
filter; each output sample is computed from a buffer holding its entire filter window), so
a decoder holds the resampled result plus a block whatever the source rate. The filter
has 20 × max(up, down) + 1 taps for the reduced ratio up/down = 16000/rate; a rate coprime
with 16,000 (e.g. 191,999 Hz) would need millions of taps, so ratios whose factors exceed
8,192 are replaced by the nearest ratio within that bound (at most 63 ppm off for rates in
4-192 kHz). Every common rate (8, 11.025, 12, 16, 22.05, 24, 32, 37.8, 44.056, 44.1, 48,
88.2, 96, 176.4, 192 kHz) is resampled exactly.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy.signal import firwin, resample_poly

#: largest up/down factor of the resampling ratio; the filter has 20 × this + 1 taps
_MAX_POLYPHASE_FACTOR = 8192


def resample(wav: np.ndarray, source_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational factor target_sr/source_sr."""
    wav = np.asarray(wav, dtype=np.float32)
    if source_sr == target_sr:
        return np.ascontiguousarray(wav)
    common = math.gcd(int(source_sr), int(target_sr))
    out = resample_poly(wav, target_sr // common, source_sr // common)
    return np.ascontiguousarray(out, dtype=np.float32)


class StreamingResampler:
    """``resample_poly`` fed block by block, with the state carried between blocks.

    Output sample k is centred on input sample k·down/up and its filter reaches
    ``half_len``/up input samples either side. Each block is appended to the inputs still
    needed; outputs whose whole window is available are computed by ``resample_poly`` on
    that buffer (which equals the whole-signal result there) and inputs no later output
    needs are dropped. The buffer always starts on a multiple of ``down``, so its outputs
    line up with the whole signal's.
    """

    def __init__(self, source_sr: int, target_sr: int):
        self.up, self.down = polyphase_factors(source_sr, target_sr)
        self._passthrough = self.up == self.down == 1
        self._half_len = 10 * max(self.up, self.down)  # as resample_poly designs its filter
        # resample_poly's own filter in float32, designed once instead of once per block
        self._taps = None if self._passthrough else firwin(
            2 * self._half_len + 1, 1.0 / max(self.up, self.down),
            window=("kaiser", 5.0)).astype(np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._offset = 0   # index in the whole signal of _pending[0]
        self._emitted = 0  # output samples produced so far
        self._chunks: list[np.ndarray] = []

    def feed(self, samples: np.ndarray) -> None:
        if self._passthrough:
            self._chunks.append(np.array(samples, dtype=np.float32))
            return
        self._pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32)))
        last_input = self._offset + len(self._pending) - 1
        # outputs k with k·down + half_len <= last_input·up have every input they need
        self._emit_until((last_input * self.up - self._half_len) // self.down + 1)
        self._drop_consumed_inputs()

    def finish(self) -> np.ndarray:
        """All outputs, as resample_poly would give them (zeros after the last input)."""
        if not self._passthrough:
            total_inputs = self._offset + len(self._pending)
            self._emit_until(-(-total_inputs * self.up // self.down))
        self._pending = np.zeros(0, dtype=np.float32)
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._chunks)

    def _emit_until(self, stop: int) -> None:
        if stop <= self._emitted:
            return
        out = resample_poly(self._pending, self.up, self.down, window=self._taps)
        first = self._offset * self.up // self.down  # exact: _offset is a multiple of down
        self._chunks.append(out[self._emitted - first:stop - first].copy())
        self._emitted = stop

    def _drop_consumed_inputs(self) -> None:
        needed_from = max(0, (self._emitted * self.down - self._half_len) // self.up)
        new_offset = needed_from - needed_from % self.down
        if new_offset > self._offset:
            self._pending = self._pending[new_offset - self._offset:]
            self._offset = new_offset


def polyphase_factors(source_sr: int, target_sr: int) -> tuple[int, int]:
    """(up, down) for resampling source_sr to target_sr: the exact reduced ratio when both
    factors are at most _MAX_POLYPHASE_FACTOR, else the nearest ratio within that bound
    (the filter's length, and so its cost, grows with the larger factor)."""
    ratio = Fraction(int(target_sr), int(source_sr))
    if max(ratio.numerator, ratio.denominator) > _MAX_POLYPHASE_FACTOR:
        # bounding the denominator by F/ceil(ratio) also keeps the numerator within F
        ratio = ratio.limit_denominator(max(1, _MAX_POLYPHASE_FACTOR // math.ceil(ratio)))
    if ratio.numerator == 0:  # below 1/F: the strongest reduction allowed is the nearest
        return 1, _MAX_POLYPHASE_FACTOR
    return ratio.numerator, ratio.denominator
