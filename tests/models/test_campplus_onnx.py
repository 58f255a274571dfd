"""campplus-192 on ONNX Runtime: the same enrollment space as the torch network (so no
profile is re-embedded), used by default once `make venv` has built it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from enroll_models.campplus import CamPlusPlusEmbedder
from enroll_models.campplus_onnx import MANIFEST_FILE, MODEL_FILE, ONNX_DIR, built_model
from speechcore.embedder import sha256_file
from tests.conftest import load_test_other_sample

pytestmark = [pytest.mark.models_only, pytest.mark.usefixtures("single_torch_thread")]


@pytest.fixture(scope="module")
def both():
    if built_model(CamPlusPlusEmbedder(backend="torch").weights_sha256) is None:
        pytest.fail("enroll_models/onnx/campplus-192.onnx is not built: `make venv` runs "
                    "scripts/export_campplus_onnx.py")
    return CamPlusPlusEmbedder(backend="torch"), CamPlusPlusEmbedder()


def test_the_default_backend_is_the_built_onnx_network(both):
    torch_embedder, default = both
    assert torch_embedder.backend == "torch" and default.backend == "onnx"
    assert default.version == torch_embedder.version and default.weights_sha256 == torch_embedder.weights_sha256
    manifest = json.loads((ONNX_DIR / MANIFEST_FILE).read_text())
    assert manifest["file"]["sha256"] == sha256_file(ONNX_DIR / MODEL_FILE)
    assert manifest["source"]["sha256"] == torch_embedder.weights_sha256


@pytest.mark.data
def test_onnx_vectors_are_the_torch_vectors(both):
    """Real speech of several lengths, one batch with two clips of one length (stacked)."""
    torch_embedder, default = both
    _, wavs = load_test_other_sample()
    assert len(wavs) >= 4
    wavs = [wavs[0][:16000 * 2], wavs[1][:16000 * 2], wavs[2], wavs[3][:5000], *wavs[4:]]
    reference, ours = torch_embedder.embed(wavs), default.embed(wavs)
    assert ours.shape == reference.shape == (len(wavs), 192)
    assert np.min(np.sum(reference * ours, axis=1)) > 0.99999


def test_a_stale_or_foreign_file_is_not_used(tmp_path, both):
    torch_embedder, _ = both
    assert built_model(torch_embedder.weights_sha256, tmp_path) is None  # not built there
    (tmp_path / MODEL_FILE).write_bytes((ONNX_DIR / MODEL_FILE).read_bytes())
    (tmp_path / MANIFEST_FILE).write_text((ONNX_DIR / MANIFEST_FILE).read_text())
    assert built_model(torch_embedder.weights_sha256, tmp_path) == tmp_path / MODEL_FILE
    assert built_model("0" * 64, tmp_path) is None  # made from other weights
    (tmp_path / MODEL_FILE).write_bytes(b"changed")
    assert built_model(torch_embedder.weights_sha256, tmp_path) is None  # not the manifest's bytes
