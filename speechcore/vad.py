"""Silero VAD (v6, MIT) run from the TorchScript file shipped in the silero-vad package.

The model is scored over 512-sample windows (32 ms at 16 kHz) with its recurrent state
carried from window to window; the TorchScript file's own ``audio_forward`` runs that loop
in one call, giving the same probabilities as silero's ``get_speech_timestamps`` loop,
only faster. Turning probabilities into segments is silero's own
``get_speech_timestamps_from_probs`` (pure Python), so thresholds, hangover and padding
behave exactly as upstream.

Run it with one torch thread (Settings.torch_threads): each 512-sample window is far too
small to gain from intra-op threads, and on a busy machine two threads made it 10-50x
slower in our measurements. Concurrent requests run in parallel instead: the module keeps
its recurrent state in itself (two threads sharing one crash the process), so each thread
scores with its own copy of the loaded module, and torch releases the GIL while it runs.
"""
from __future__ import annotations

import copy
import functools
import threading

import numpy as np
import torch

from speechcore.resampling import resample
from speechcore.embedder import installed_package_file

VAD_SAMPLE_RATE = 16000
_WINDOW_SAMPLES = 512
#: level normalisation before the model: quiet narrowband speech (a telephone digit at
#: -48 dBFS RMS) scores under 0.5 although the same audio scores ~1.0 once louder
#: (docs/vad.md). The level is the LEVEL_PERCENTILE-th percentile of the 32 ms window RMS
#: (the loud, speech-bearing part, not the whole file's RMS that pauses pull down); audio is
#: only ever boosted, up to TARGET_LEVEL_DBFS and by at most MAX_GAIN_DB, and audio whose
#: level is under FLOOR_LEVEL_DBFS (digital silence, dither) is left alone.
TARGET_LEVEL_DBFS = -25.0
MAX_GAIN_DB = 30.0
FLOOR_LEVEL_DBFS = -90.0
LEVEL_PERCENTILE = 95.0
_per_thread = threading.local()


def level_gain(wav16k: np.ndarray, target_dbfs: float = TARGET_LEVEL_DBFS,
               max_gain_db: float = MAX_GAIN_DB) -> float:
    """The linear gain that level normalisation applies to ``wav16k`` (>= 1)."""
    wav16k = np.asarray(wav16k, dtype=np.float64)
    windows = wav16k[:len(wav16k) // _WINDOW_SAMPLES * _WINDOW_SAMPLES].reshape(-1, _WINDOW_SAMPLES)
    if windows.size == 0:
        windows = wav16k.reshape(1, -1)
    if windows.size == 0:
        return 1.0
    level = float(np.percentile(np.sqrt(np.mean(windows ** 2, axis=1)), LEVEL_PERCENTILE))
    if level <= 10.0 ** (FLOOR_LEVEL_DBFS / 20.0):
        return 1.0
    gain_db = float(np.clip(target_dbfs - 20.0 * np.log10(level), 0.0, max_gain_db))
    return 10.0 ** (gain_db / 20.0)


@functools.lru_cache(maxsize=1)
def _loaded_model() -> torch.jit.ScriptModule:
    """The model as loaded from the package, warmed; only ever copied, never run by requests."""
    path = installed_package_file("silero_vad", "data/silero_vad.jit")
    model = torch.jit.load(str(path), map_location="cpu")
    model.eval()
    # TorchScript's profiling executor optimises the graph on the first calls; pay that
    # here (about 0.1 s) instead of on the first request.
    with torch.inference_mode():
        for _ in range(2):
            model.reset_states()
            model.audio_forward(torch.zeros(8 * _WINDOW_SAMPLES), VAD_SAMPLE_RATE)
        model.reset_states()
    return model


def _thread_model() -> torch.jit.ScriptModule:
    """This thread's copy of the model (its own recurrent state; the weights and the
    optimised graph are the same, so results are identical). A copy costs about 4 ms."""
    model = getattr(_per_thread, "model", None)
    if model is None:
        model = _per_thread.model = copy.deepcopy(_loaded_model())
    return model


@functools.lru_cache(maxsize=1)
def _timestamps_from_probs():
    # silero_vad/model.py calls torch.set_num_threads(1) at import time; keep ours.
    threads = torch.get_num_threads()
    try:
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    finally:
        torch.set_num_threads(threads)
    return get_speech_timestamps_from_probs


class SileroVAD:
    """Speech segments of a waveform. Cheap to construct: the model is loaded once per
    process; each thread runs its own copy, so any number of threads may call at once."""

    def __init__(self, threshold: float = 0.5, min_speech_duration_ms: int = 250,
                 min_silence_duration_ms: int = 100, speech_pad_ms: int = 30,
                 neg_threshold: float | None = None, normalise_level: bool = False):
        self.threshold = threshold
        self.neg_threshold = neg_threshold  # None: silero's own, threshold - 0.15
        self.normalise_level = normalise_level
        self.min_speech_duration_ms = min_speech_duration_ms
        self.min_silence_duration_ms = min_silence_duration_ms
        self.speech_pad_ms = speech_pad_ms
        _loaded_model()
        _timestamps_from_probs()

    def speech_probabilities(self, wav16k: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window of a 16 kHz waveform."""
        audio = torch.from_numpy(np.ascontiguousarray(wav16k, dtype=np.float32))
        if audio.numel() < _WINDOW_SAMPLES:
            # audio_forward rejects inputs shorter than one window
            audio = torch.nn.functional.pad(audio, (0, _WINDOW_SAMPLES - audio.numel()))
        model = _thread_model()
        with torch.inference_mode():
            model.reset_states()
            probabilities = model.audio_forward(audio, VAD_SAMPLE_RATE)
            model.reset_states()
        return probabilities[0].numpy()

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
        if self.normalise_level:
            wav16k = np.asarray(wav16k, dtype=np.float32) * np.float32(level_gain(wav16k))
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
