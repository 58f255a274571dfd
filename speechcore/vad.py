"""Silero VAD (v6, MIT) run from the ONNX sequence model shipped in the silero-vad package.

The model scores 512-sample windows (32 ms at 16 kHz), each with the 64 samples before it
as context and its recurrent state carried from window to window. The package's
``silero_vad_16k_sequence.onnx`` takes every window of a clip at once and runs that loop
inside ONNX Runtime: one call per clip, with the same probabilities as the TorchScript
model's ``audio_forward`` (largest difference 4e-5 over 120 clean, telephone and quiet
clips of the shared data, identical segments) at a fifth of its cost (issue #13). Turning
probabilities into segments is silero's own ``get_speech_timestamps_from_probs`` (pure
Python), so thresholds, hangover and padding behave exactly as upstream.

Two departures from silero's defaults, measured with ``nessa eval-vad`` (docs/vad.md): quiet
audio is boosted before the model scores it (``LevelNormalisation``; the segments still
cut the audio as given), and speech starts at probability 0.35 instead of 0.5
(``SPEECH_THRESHOLD``). Both recover speech the model missed in quiet and narrowband
(telephone) audio without finding any in silence, white or pink noise or ``empty.flac``.

One session per process, one intra-op thread: a window is far too small to gain from
threads, and the state is an input and an output of each call, not held by the session,
so any number of requests may score at once (ONNX Runtime's ``run`` is thread-safe).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnxruntime

from speechcore.resampling import resample
from speechcore.embedder import installed_package_file

VAD_SAMPLE_RATE = 16000
_WINDOW_SAMPLES = 512


@dataclasses.dataclass(frozen=True)
class LevelNormalisation:
    """Gain applied before the model (to what it scores only: segments cut the input as
    given). Quiet speech scores low: an AudioMNIST digit recorded at -48 dBFS RMS, through a
    telephone channel, peaks at probability 0.50; scaled to a -6 dBFS peak, at 1.00. The level is the
    ``percentile``-th percentile of the 32 ms window RMS (the loud, speech-bearing part;
    the whole-file RMS falls with every pause). Audio is only boosted, towards
    ``target_dbfs`` and by at most ``max_gain_db``; audio whose level is under
    ``floor_dbfs`` is left as it is: nothing in it is loud enough to be speech meant for
    us, and boosting it made the background of quiet meeting recordings (their loud part
    at -61 and -65 dBFS) read as speech."""

    target_dbfs: float = -25.0
    max_gain_db: float = 30.0
    floor_dbfs: float = -60.0
    percentile: float = 95.0

    def gain(self, wav16k: np.ndarray) -> float:
        """The linear gain for ``wav16k`` (>= 1)."""
        wav16k = np.asarray(wav16k, dtype=np.float64)
        usable = len(wav16k) // _WINDOW_SAMPLES * _WINDOW_SAMPLES
        windows = wav16k[:usable].reshape(-1, _WINDOW_SAMPLES) if usable else wav16k.reshape(1, -1)
        if windows.size == 0:
            return 1.0
        level = float(np.percentile(np.sqrt(np.mean(windows ** 2, axis=1)), self.percentile))
        if level <= 10.0 ** (self.floor_dbfs / 20.0):
            return 1.0
        gain_db = float(np.clip(self.target_dbfs - 20.0 * np.log10(level), 0.0, self.max_gain_db))
        return 10.0 ** (gain_db / 20.0)


_CONTEXT_SAMPLES = 64


@functools.lru_cache(maxsize=1)
def _session() -> onnxruntime.InferenceSession:
    """The sequence model as shipped in the package, loaded once and warmed."""
    path = installed_package_file("silero_vad", "data/silero_vad_16k_sequence.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _run(session, np.zeros(8 * _WINDOW_SAMPLES, dtype=np.float32))
    return session


def _run(session: onnxruntime.InferenceSession, wav16k: np.ndarray) -> np.ndarray:
    padded = np.zeros(max(1, -(-len(wav16k) // _WINDOW_SAMPLES)) * _WINDOW_SAMPLES, dtype=np.float32)
    padded[:len(wav16k)] = wav16k  # the last window is zero-padded, as silero pads it
    windows = padded.reshape(-1, _WINDOW_SAMPLES)
    context = np.zeros((len(windows), _CONTEXT_SAMPLES), dtype=np.float32)
    context[1:] = windows[:-1, -_CONTEXT_SAMPLES:]
    state = np.zeros((1, 1, 128), dtype=np.float32)
    (probabilities,) = session.run(["speech_probs"], {"input": np.concatenate([context, windows], axis=1),
                                                      "h": state, "c": state})
    return np.asarray(probabilities, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _timestamps_from_probs():
    # silero_vad/model.py calls torch.set_num_threads(1) at import time; keep ours.
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    finally:
        torch.set_num_threads(threads)
    return get_speech_timestamps_from_probs


#: what the service's detector (``SileroVAD()``) uses, chosen on the dev half of
#: ``nessa eval-vad`` (docs/vad.md): at silero's 0.5, Speech Commands words through a
#: telephone channel kept 81% of their clean-audio speech and 19 of 200 words none at all;
#: at 0.35 (silero's hysteresis: speech ends under 0.35 - 0.15) 89% and 10, while clean
#: LibriSpeech gains 1.2% more speech seconds and the noise-only audio stays as it was
SPEECH_THRESHOLD = 0.35
DEFAULT_LEVEL = LevelNormalisation()


class SileroVAD:
    """Speech segments of a waveform. Cheap to construct: the model is loaded once per
    process, and any number of threads may call at once."""

    def __init__(self, threshold: float = SPEECH_THRESHOLD, min_speech_duration_ms: int = 250,
                 min_silence_duration_ms: int = 100, speech_pad_ms: int = 30,
                 neg_threshold: float | None = None, level: LevelNormalisation | None = DEFAULT_LEVEL):
        self.threshold = threshold
        self.neg_threshold = neg_threshold  # None: silero's own, threshold - 0.15
        self.level = level  # None: the model scores the audio as given
        self.min_speech_duration_ms = min_speech_duration_ms
        self.min_silence_duration_ms = min_silence_duration_ms
        self.speech_pad_ms = speech_pad_ms
        _session()
        _timestamps_from_probs()

    def identity(self) -> dict:
        """Every setting that changes which samples count as speech: part of the key of any
        cache of embeddings made from this detector's output."""
        return {"detector": "silero", "threshold": self.threshold, "neg_threshold": self.neg_threshold,
                "min_speech_duration_ms": self.min_speech_duration_ms,
                "min_silence_duration_ms": self.min_silence_duration_ms,
                "speech_pad_ms": self.speech_pad_ms,
                "level": None if self.level is None else dataclasses.asdict(self.level)}

    def speech_probabilities(self, wav16k: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window of a 16 kHz waveform."""
        return _run(_session(), np.asarray(wav16k, dtype=np.float32).reshape(-1))

    def segments(self, wav: np.ndarray, sample_rate: int = VAD_SAMPLE_RATE
                 ) -> list[tuple[float, float]]:
        """(start, end) of each speech segment in seconds, padded by speech_pad_ms."""
        return [(start / VAD_SAMPLE_RATE, end / VAD_SAMPLE_RATE)
                for start, end in self._spans_16k(wav, sample_rate)]

    def speech_only(self, wav: np.ndarray, sample_rate: int = VAD_SAMPLE_RATE
                    ) -> tuple[np.ndarray, float]:
        """The speech segments concatenated (at the input rate) and their total seconds."""
        wav = np.asarray(wav, dtype=np.float32)
        scale = sample_rate / VAD_SAMPLE_RATE
        pieces = [wav[int(round(start * scale)):int(round(end * scale))]
                  for start, end in self._spans_16k(wav, sample_rate)]
        speech = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return speech, len(speech) / sample_rate

    def _spans_16k(self, wav: np.ndarray, sample_rate: int) -> list[tuple[int, int]]:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {wav.shape}")
        wav16k = resample(wav, sample_rate, VAD_SAMPLE_RATE)
        if wav16k.size == 0:
            return []
        return self.spans_from_probabilities(self.model_input_probabilities(wav16k), len(wav16k))

    def model_input_probabilities(self, wav16k: np.ndarray) -> np.ndarray:
        """Speech probabilities of a 16 kHz waveform after this detector's front end (level
        normalisation when enabled); what ``segments`` thresholds."""
        if self.level is not None:
            wav16k = np.asarray(wav16k, dtype=np.float32) * np.float32(self.level.gain(wav16k))
        return self.speech_probabilities(wav16k)

    def spans_from_probabilities(self, probabilities: np.ndarray, n_samples: int
                                 ) -> list[tuple[int, int]]:
        """(start, end) 16 kHz sample indices of the speech segments that silero's
        ``get_speech_timestamps_from_probs`` finds in ``probabilities`` with these settings."""
        stamps = _timestamps_from_probs()(
            np.asarray(probabilities).tolist(), sampling_rate=VAD_SAMPLE_RATE,
            threshold=self.threshold, neg_threshold=self.neg_threshold,
            min_speech_duration_ms=self.min_speech_duration_ms,
            min_silence_duration_ms=self.min_silence_duration_ms,
            speech_pad_ms=self.speech_pad_ms, audio_length_samples=n_samples)
        return [(int(stamp["start"]), int(stamp["end"])) for stamp in stamps]
