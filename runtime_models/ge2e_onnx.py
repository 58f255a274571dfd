"""GE2E on ONNX Runtime: the runtime models ``ge2e-256-onnx`` and ``ge2e-256-onnx-int8``.

The same network as ``ge2e-256`` (runtime_models/ge2e.py: LSTM 3x256 -> Linear -> ReLU ->
L2 norm, weights from the installed resemblyzer ``pretrained.pt``), exported to ONNX with
a dynamic partials axis and run with onnxruntime. The audio front end (volume
normalisation, mel spectrogram, 1.6-s partial slicing) and the mean of the partial
embeddings are *not* in the graph: they are ge2e.py's own code, called here unchanged.

The three LSTM layers are exported as three single-layer ONNX ``LSTM`` nodes (the
weights are split from the 3-layer torch LSTM, numerically the same network), so that
int8 dynamic quantisation can leave the first layer in fp32: quantising it, as
onnxruntime's default does, destroys the embedding (cosine ~0.6 to fp32), because its
40-d mel *power* input spans many orders of magnitude.

Model files: ``runtime_models/onnx/ge2e-256.onnx`` (fp32) and ``ge2e-256-int8.onnx``
are derived from the installed resemblyzer weights by ``scripts/export_ge2e_onnx.py``,
which `make venv` runs (2 s, byte-for-byte deterministic); they are not committed. The
committed ``runtime_models/onnx/manifest.json`` records their expected checksums. An
explicit ``model_path`` wins; when the built file is absent and a ``cache_dir`` is given,
the file is rebuilt there on first use.
"""
from __future__ import annotations

import json
import pathlib
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from runtime_models.ge2e import (MAX_PARTIALS_PER_CALL, N_MELS, PARTIAL_FRAMES, SAMPLE_RATE,
                                 WEIGHTS_FILE, WEIGHTS_PACKAGE, GE2EEmbedder)
from speechcore.embedder import Embedder, l2_normalise, resolve_weights, sha256_file

ONNX_DIR = pathlib.Path(__file__).resolve().parent / "onnx"
FP32_FILE = "ge2e-256.onnx"
INT8_FILE = "ge2e-256-int8.onnx"
MANIFEST_FILE = "manifest.json"
OPSET = 17
INPUT_NAME = "mels"
OUTPUT_NAME = "embeds"


# -- export ----------------------------------------------------------------------------
class _StackedLayers(nn.Module):
    """ge2e.VoiceEncoder with its 3-layer LSTM split into three 1-layer LSTMs (same maths),
    so that the ONNX graph has one LSTM node per layer."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        source = encoder.lstm
        self.layers = nn.ModuleList()
        for k in range(source.num_layers):
            layer = nn.LSTM(source.input_size if k == 0 else source.hidden_size,
                            source.hidden_size, 1, batch_first=True)
            layer.load_state_dict({f"{name}_l0": getattr(source, f"{name}_l{k}").detach().clone()
                                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            self.layers.append(layer)
        self.linear = encoder.linear
        self.relu = encoder.relu

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = mels
        hidden = None
        for layer in self.layers:
            x, (hidden, _) = layer(x)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def export_fp32(out_path: str | pathlib.Path, weights_path: str | pathlib.Path | None = None) -> pathlib.Path:
    """Export the GE2E network (mel partials -> L2-normed partial embeddings) to ONNX."""
    import onnx

    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reference = GE2EEmbedder(weights_path)
    network = _StackedLayers(reference.model).eval()
    example = torch.zeros(2, PARTIAL_FRAMES, N_MELS)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # h0/c0 default to zeros in the graph, so any batch size is fine (tested)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # the TorchScript exporter: deterministic bytes, plain ONNX LSTM nodes, no onnxscript
        torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "partials"}, OUTPUT_NAME: {0: "partials"}},
                          do_constant_folding=True)
    model = onnx.load(str(tmp))
    model.producer_name, model.producer_version = "nessa scripts/export_ge2e_onnx.py", torch.__version__
    model.doc_string = (f"GE2E ge2e-256 (resemblyzer {WEIGHTS_FILE}, sha256 "
                        f"{reference.weights_sha256}); input mels (partials, {PARTIAL_FRAMES}, "
                        f"{N_MELS}) mel power, output (partials, 256) L2-normed")
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out_path)
    return out_path


def lstm_node_names(path: str | pathlib.Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "LSTM"]


def quantize_int8(fp32_path: str | pathlib.Path, out_path: str | pathlib.Path,
                  keep_fp32_lstm_layers: int = 1, per_channel: bool = True) -> pathlib.Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of every
    LSTM/MatMul except the first ``keep_fp32_lstm_layers`` LSTM layers.

    Measured on LibriSpeech test-other (cosine to fp32, one thread, same speed): all layers
    quantised ~0.57; first LSTM fp32, per-tensor 0.996; first LSTM fp32, per-channel 0.9995.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = pathlib.Path(out_path)
    excluded = lstm_node_names(fp32_path)[:keep_fp32_lstm_layers]
    tmp = out_path.with_name(out_path.name + ".tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": not needed for dynamic LSTM/MatMul
    try:
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=excluded, op_types_to_quantize=["LSTM", "MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    tmp.replace(out_path)
    return out_path


def build_models(out_dir: str | pathlib.Path, weights_path: str | pathlib.Path | None = None) -> dict:
    """Build both ONNX files and their manifest in out_dir; returns the manifest."""
    import onnx
    import onnxruntime

    out_dir = pathlib.Path(out_dir)
    fp32 = export_fp32(out_dir / FP32_FILE, weights_path)
    int8 = quantize_int8(fp32, out_dir / INT8_FILE)
    _, source_sha = resolve_weights(weights_path, WEIGHTS_PACKAGE, WEIGHTS_FILE)
    manifest = {
        "source": {"package": WEIGHTS_PACKAGE, "file": WEIGHTS_FILE, "sha256": source_sha},
        "opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)",
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "input": {"name": INPUT_NAME, "shape": ["partials", PARTIAL_FRAMES, N_MELS]},
        "output": {"name": OUTPUT_NAME, "shape": ["partials", 256]},
        "files": {
            FP32_FILE: {"version": "ge2e-256-onnx", "sha256": sha256_file(fp32),
                        "bytes": fp32.stat().st_size},
            INT8_FILE: {"version": "ge2e-256-onnx-int8", "sha256": sha256_file(int8),
                        "bytes": int8.stat().st_size,
                        "quantisation": "onnxruntime quantize_dynamic, QInt8 weights, per-channel, "
                                        "LSTM+MatMul+Gemm, first LSTM node kept fp32",
                        "fp32_lstm_nodes": lstm_node_names(fp32)[:1]},
        },
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def locate_model(file_name: str, model_path: str | pathlib.Path | None = None,
                 cache_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """The ONNX file to run: an explicit path, else the runtime_models/onnx/ file built at install,
    else (when cache_dir is given) a copy built there from the installed resemblyzer weights."""
    if model_path is not None:
        path = pathlib.Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} not found")
        return path
    built = ONNX_DIR / file_name
    if built.is_file():
        return built
    if cache_dir is None:
        raise FileNotFoundError(
            f"{built} is missing; run `make venv` (scripts/export_ge2e_onnx.py) or pass cache_dir to build it")
    cached = pathlib.Path(cache_dir) / file_name
    if not cached.is_file():
        build_models(cache_dir)
    return cached


# -- runtime ---------------------------------------------------------------------------
class GE2EOnnxEmbedder(Embedder):
    """ge2e-256 run by onnxruntime (fp32). ``weights_sha256`` is the hash of the ONNX file."""

    version = "ge2e-256-onnx"
    role = "runtime"
    dim = 256
    sample_rate = SAMPLE_RATE
    model_file = FP32_FILE
    #: run the partials of all utterances in a batch through one session call
    pool_utterances = True

    def __init__(self, model_path: str | pathlib.Path | None = None, *,
                 cache_dir: str | pathlib.Path | None = None, intra_op_num_threads: int = 1):
        import onnxruntime

        path = locate_model(self.model_file, model_path, cache_dir)
        self.weights_path, self.weights_sha256 = resolve_weights(path, "", "")
        # ge2e.py's front end, reused as is; its torch network is not needed here
        self._front_end = GE2EEmbedder()
        self._front_end.model = None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])

    def partial_embeddings(self, mels: np.ndarray) -> np.ndarray:
        """(partials, 160, 40) -> (partials, 256) L2-normed partial embeddings."""
        return np.concatenate([
            self.session.run([OUTPUT_NAME], {INPUT_NAME: mels[start:start + MAX_PARTIALS_PER_CALL]})[0]
            for start in range(0, mels.shape[0], MAX_PARTIALS_PER_CALL)])

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        if not len(batch):
            return np.zeros((0, self.dim), dtype=np.float32)
        partials = [self._front_end.partial_mels(wav).numpy() for wav in batch]
        if self.pool_utterances:
            counts = [p.shape[0] for p in partials]
            stacked = self.partial_embeddings(np.ascontiguousarray(np.concatenate(partials)))
            per_utterance = np.split(stacked, np.cumsum(counts)[:-1])
        else:
            per_utterance = [self.partial_embeddings(np.ascontiguousarray(p)) for p in partials]
        return l2_normalise(np.stack([chunk.mean(axis=0) for chunk in per_utterance]))


class GE2EOnnxInt8Embedder(GE2EOnnxEmbedder):
    """ge2e-256 dynamically quantised to int8 (first LSTM layer kept fp32)."""

    version = "ge2e-256-onnx-int8"
    model_file = INT8_FILE
    # dynamic quantisation picks one activation scale per input tensor, so a partial's
    # embedding would depend on the other utterances in its call: one call per utterance
    # keeps every embedding a function of its own utterance only
    pool_utterances = False
