"""GE2E voice encoder, the runtime-side model ``ge2e-256``.

A re-implementation of Resemblyzer's VoiceEncoder (resemble-ai/Resemblyzer, Apache-2.0;
itself the encoder of Real-Time-Voice-Cloning), loading its ``pretrained.pt`` from the
installed resemblyzer package. resemblyzer is never imported: it pulls librosa and
webrtcvad. What is reproduced (resemblyzer 0.1.4: audio.py, hparams.py, voice_encoder.py):

* ``normalize_volume`` to -30 dBFS, increase only;
* ``wav_to_mel_spectrogram``: librosa.feature.melspectrogram(sr=16000, n_fft=400,
  hop_length=160, n_mels=40): power-2 STFT with a periodic Hann window and center=True,
  Slaney mel scale with Slaney area normalisation, no log. Recent librosa (>= 0.10) pads
  the centred frames with zeros (pad_mode="constant"), as done here; librosa < 0.10 used
  reflection, which only changes the first and last two frames;
* ``compute_partial_slices`` with 160-frame partials at rate 1.3 and min_coverage 0.75;
  each partial goes through LSTM(40, 256, 3 layers) -> Linear(256, 256) -> ReLU -> L2 norm,
  and the utterance embedding is the L2-normed mean of its partials.

Resemblyzer's ``preprocess_wav`` also trims long silences with webrtcvad; that step is
skipped because our pipeline runs Silero VAD upstream and embeds speech only.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torchaudio.functional as audio_functional

from speechcore.embedder import Embedder, l2_normalise, resolve_weights

WEIGHTS_PACKAGE = "resemblyzer"
WEIGHTS_FILE = "pretrained.pt"

SAMPLE_RATE = 16000
N_FFT = 400         # 25 ms window
HOP_LENGTH = 160    # 10 ms step
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
PARTIAL_RATE = 1.3    # partials per second
MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
INT16_MAX = 2 ** 15 - 1
#: partials per LSTM call; bounds memory on very long inputs
MAX_PARTIALS_PER_CALL = 512


class VoiceEncoder(nn.Module):
    def __init__(self, hidden_size: int = 256, embedding_size: int = 256, num_layers: int = 3):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, embedding_size)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(partials, frames, 40) mel power -> (partials, 256) L2-normed embeddings."""
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


class GE2EEmbedder(Embedder):
    version = "ge2e-256"
    role = "runtime"
    dim = 256
    sample_rate = SAMPLE_RATE

    def __init__(self, weights_path: str | pathlib.Path | None = None, device: str = "cpu"):
        path, self.weights_sha256 = resolve_weights(weights_path, WEIGHTS_PACKAGE, WEIGHTS_FILE)
        self.weights_path = path
        self.device = torch.device(device)
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        # the checkpoint also holds GE2E's training-only similarity_weight/bias
        state = {key: value for key, value in checkpoint["model_state"].items()
                 if key.startswith(("lstm.", "linear."))}
        model = VoiceEncoder()
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self._window = torch.hann_window(N_FFT, periodic=True)
        self._mel_filters = audio_functional.melscale_fbanks(
            n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=N_MELS,
            sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")

    def mel_spectrogram(self, wav: np.ndarray) -> torch.Tensor:
        """librosa.feature.melspectrogram equivalent, shape (frames, 40)."""
        spectrum = torch.stft(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)),
                              n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT,
                              window=self._window, center=True, pad_mode="constant",
                              return_complex=True)
        return (spectrum.abs() ** 2).T @ self._mel_filters

    def partial_mels(self, wav: np.ndarray) -> torch.Tensor:
        """The (partials, 160, 40) mel windows of one utterance, as Resemblyzer cuts them."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"expected a non-empty mono waveform, got shape {wav.shape}")
        wav = normalize_volume(wav, TARGET_DBFS)
        wav_slices, mel_slices = compute_partial_slices(len(wav))
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = self.mel_spectrogram(wav)
        return torch.stack([mel[s] for s in mel_slices])

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        if not len(batch):
            return np.zeros((0, self.dim), dtype=np.float32)
        partials = [self.partial_mels(wav) for wav in batch]
        counts = [p.shape[0] for p in partials]
        stacked = torch.cat(partials).to(self.device)
        with torch.inference_mode():
            partial_embeds = torch.cat([
                self.model(stacked[start:start + MAX_PARTIALS_PER_CALL])
                for start in range(0, stacked.shape[0], MAX_PARTIALS_PER_CALL)
            ]).float().cpu()
        means = torch.stack([chunk.mean(dim=0) for chunk in partial_embeds.split(counts)])
        return l2_normalise(means.numpy())


def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise the level to target_dbfs if quieter; never lower it (Resemblyzer, increase_only)."""
    rms = float(np.sqrt(np.mean((wav.astype(np.float64) * INT16_MAX) ** 2)))
    if rms == 0.0:  # digital silence: upstream would multiply by inf and produce NaN
        return wav
    change_db = target_dbfs - 20.0 * np.log10(rms / INT16_MAX)
    if change_db < 0:
        return wav
    return (wav * 10.0 ** (change_db / 20.0)).astype(np.float32)


def compute_partial_slices(n_samples: int, rate: float = PARTIAL_RATE,
                           min_coverage: float = MIN_COVERAGE) -> tuple[list[slice], list[slice]]:
    """Waveform and mel slices of the 160-frame partials covering n_samples (Resemblyzer).

    The last partial is kept, zero-padded, when at least min_coverage of it is real audio;
    there is always at least one partial. Slices may run past the end of the waveform.
    """
    assert 0 < min_coverage <= 1
    samples_per_frame = SAMPLE_RATE * 10 // 1000
    n_frames = int(np.ceil((n_samples + 1) / samples_per_frame))
    frame_step = int(np.round((SAMPLE_RATE / rate) / samples_per_frame))
    assert 0 < frame_step <= PARTIAL_FRAMES, "partial rate out of range"

    wav_slices, mel_slices = [], []
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    for start in range(0, steps, frame_step):
        mel_slices.append(slice(start, start + PARTIAL_FRAMES))
        wav_slices.append(slice(start * samples_per_frame, (start + PARTIAL_FRAMES) * samples_per_frame))

    last = wav_slices[-1]
    coverage = (n_samples - last.start) / (last.stop - last.start)
    if coverage < min_coverage and len(mel_slices) > 1:
        mel_slices, wav_slices = mel_slices[:-1], wav_slices[:-1]
    return wav_slices, mel_slices

