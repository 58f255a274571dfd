"""ge2e-256-onnx and ge2e-256-onnx-int8: the GE2E runtime model on onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime_models import AVAILABLE
from runtime_models.ge2e import GE2EEmbedder
from runtime_models.ge2e_onnx import (FP32_FILE, INT8_FILE, MANIFEST_FILE, ONNX_DIR, GE2EOnnxEmbedder,
                                      GE2EOnnxInt8Embedder, lstm_node_names)
from speechcore.embedder import Embedder, sha256_file
from tests.conftest import assert_speakers_separate, load_test_other_sample

pytestmark = [pytest.mark.models_only, pytest.mark.usefixtures("single_torch_thread")]

CLASSES = {"ge2e-256-onnx": GE2EOnnxEmbedder, "ge2e-256-onnx-int8": GE2EOnnxInt8Embedder}



@pytest.fixture(scope="module")
def torch_ge2e() -> GE2EEmbedder:
    return GE2EEmbedder()


@pytest.fixture(scope="module")
def fp32() -> GE2EOnnxEmbedder:
    return GE2EOnnxEmbedder()


@pytest.fixture(scope="module")
def int8() -> GE2EOnnxInt8Embedder:
    return GE2EOnnxInt8Embedder()


@pytest.fixture(scope="module", params=list(CLASSES))
def embedder(request, fp32, int8) -> Embedder:
    return {"ge2e-256-onnx": fp32, "ge2e-256-onnx-int8": int8}[request.param]


@pytest.fixture(scope="module")
def synthetic() -> list[np.ndarray]:
    """Harmonic 'voices' with vibrato and noise, of mixed lengths (0.3-5 s)."""
    rng = np.random.default_rng(0)
    wavs = []
    for seconds, f0 in ((0.3, 110.0), (1.2, 140.0), (2.0, 190.0), (3.0, 230.0), (5.0, 120.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / 16000
        wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
        wavs.append((0.1 * wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    return wavs


@pytest.fixture(scope="module")
def utterances() -> tuple[list[str], list[np.ndarray]]:
    return load_test_other_sample()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_registry_entries_and_identity(embedder):
    assert AVAILABLE[embedder.version] == f"runtime_models.ge2e_onnx:{type(embedder).__name__}"
    assert (embedder.dim, embedder.role, embedder.sample_rate) == (256, "runtime", 16000)
    assert embedder.describe()["version"] == embedder.version


def test_weights_sha256_is_the_onnx_file_hash_and_stable(embedder):
    assert embedder.weights_path.suffix == ".onnx"
    assert embedder.weights_sha256 == sha256_file(embedder.weights_path)
    assert type(embedder)().weights_sha256 == embedder.weights_sha256
    manifest = json.loads((ONNX_DIR / MANIFEST_FILE).read_text())
    assert manifest["files"][embedder.weights_path.name]["sha256"] == embedder.weights_sha256


def test_built_files_are_small_and_first_lstm_is_fp32():
    assert (ONNX_DIR / FP32_FILE).stat().st_size < 20e6
    assert (ONNX_DIR / FP32_FILE).stat().st_size + (ONNX_DIR / INT8_FILE).stat().st_size < 30e6
    assert len(lstm_node_names(ONNX_DIR / FP32_FILE)) == 3
    # the int8 graph keeps exactly one float LSTM (the first); the other two are quantised
    assert lstm_node_names(ONNX_DIR / INT8_FILE) == lstm_node_names(ONNX_DIR / FP32_FILE)[:1]


def test_shape_unit_norm_determinism_and_batch_independence(embedder, synthetic):
    vectors = embedder.embed(synthetic)
    assert vectors.shape == (len(synthetic), 256) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(synthetic), vectors)
    alone = np.stack([embedder.embed_one(wav) for wav in synthetic])
    np.testing.assert_allclose(alone, vectors, atol=1e-5)
    reordered = embedder.embed(synthetic[::-1])[::-1]
    np.testing.assert_allclose(reordered, vectors, atol=1e-5)


def test_empty_batch_empty_waveform_and_silence(embedder):
    assert embedder.embed([]).shape == (0, 256)
    with pytest.raises(ValueError):
        embedder.embed([np.zeros(0, dtype=np.float32)])
    assert np.isfinite(embedder.embed_one(np.zeros(16000, dtype=np.float32))).all()


def test_fp32_matches_torch_on_synthetic_audio(fp32, torch_ge2e, synthetic):
    assert _cosines(fp32.embed(synthetic), torch_ge2e.embed(synthetic)).min() > 0.9999


@pytest.mark.data
def test_fp32_matches_torch_on_real_speech(fp32, torch_ge2e, utterances):
    wavs = utterances[1]
    # full utterances (several partials each) and 2-s crops
    for batch in (wavs, [wav[8000:40000] for wav in wavs]):
        assert _cosines(fp32.embed(batch), torch_ge2e.embed(batch)).min() > 0.9999


@pytest.mark.data
def test_int8_stays_close_to_fp32_on_real_speech(fp32, int8, utterances):
    wavs = utterances[1]
    # observed: min 0.9994 (per-channel int8, first LSTM fp32)
    for batch in (wavs, [wav[8000:40000] for wav in wavs]):
        assert _cosines(int8.embed(batch), fp32.embed(batch)).min() > 0.99


@pytest.mark.data
def test_same_speaker_is_closer_than_different_speaker(embedder, utterances):
    assert_speakers_separate(utterances[0], embedder.embed(utterances[1]))


def test_built_into_a_cache_dir_when_not_installed(tmp_path, monkeypatch):
    """Without the files built at install, a caller-given cache dir gets the same bytes."""
    import runtime_models.ge2e_onnx as module

    monkeypatch.setattr(module, "ONNX_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        GE2EOnnxEmbedder()
    built = GE2EOnnxInt8Embedder(cache_dir=tmp_path / "cache")
    assert built.weights_path == tmp_path / "cache" / INT8_FILE
    assert built.weights_sha256 == sha256_file(ONNX_DIR / INT8_FILE)
    assert sha256_file(tmp_path / "cache" / FP32_FILE) == sha256_file(ONNX_DIR / FP32_FILE)
