"""Silero VAD (v6, MIT) run from the TorchScript file shipped in the silero-vad package.

The model is scored over 512-sample windows (32 ms at 16 kHz) with its recurrent state
carried from window to window; the TorchScript file's own ``audio_forward`` runs that loop
in one call, giving the same probabilities as silero's ``get_speech_timestamps`` loop,
only faster. Turning probabilities into segments is silero's own
``get_speech_timestamps_from_probs`` (pure Python), so thresholds, hangover and padding
behave exactly as upstream.

Two departures from silero's defaults, measured with ``nessa eval-vad`` (docs/vad.md): quiet
audio is boosted before the model scores it (``LevelNormalisation``; the segments still
cut the audio as given), and speech starts at probability 0.35 instead of 0.5
(``SPEECH_THRESHOLD``). Both recover speech the model missed in quiet and narrowband
(telephone) audio without finding any in silence, white or pink noise or ``empty.flac``.

Run it with one torch thread (Settings.torch_threads): each 512-sample window is far too
small to gain from intra-op threads, and on a busy machine two threads made it 10-50x
slower in our measurements. Concurrent requests run in parallel instead: the module keeps
its recurrent state in itself (two threads sharing one crash the process), so each thread
scores with its own copy of the loaded module, and torch releases the GIL while it runs.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import threading

import numpy as np
import torch

from speechcore.resampling import resample
from speechcore.embedder import installed_package_file

VAD_SAMPLE_RATE = 16000
_WINDOW_SAMPLES = 512
_per_thread = threading.local()


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


#: what the service's detector (``SileroVAD()``) uses, chosen on the dev half of
#: ``nessa eval-vad`` (docs/vad.md): at silero's 0.5, Speech Commands words through a
#: telephone channel kept 81% of their clean-audio speech and 19 of 200 words none at all;
#: at 0.35 (silero's hysteresis: speech ends under 0.35 - 0.15) 89% and 10, while clean
#: LibriSpeech gains 1.2% more speech seconds and the noise-only audio stays as it was
SPEECH_THRESHOLD = 0.35
DEFAULT_LEVEL = LevelNormalisation()


class SileroVAD:
    """Speech segments of a waveform. Cheap to construct: the model is loaded once per
    process; each thread runs its own copy, so any number of threads may call at once."""

    def __init__(self, threshold: float = SPEECH_THRESHOLD, min_speech_duration_ms: int = 250,
                 min_silence_duration_ms: int = 100, speech_pad_ms: int = 30,
                 neg_threshold: float | None = None, level: LevelNormalisation | None = DEFAULT_LEVEL):
        self.threshold = threshold
        self.neg_threshold = neg_threshold  # None: silero's own, threshold - 0.15
        self.level = level  # None: the model scores the audio as given
        self.min_speech_duration_ms = min_speech_duration_ms
        self.min_silence_duration_ms = min_silence_duration_ms
        self.speech_pad_ms = speech_pad_ms
        _loaded_model()
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
