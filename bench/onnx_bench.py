"""GE2E on torch vs ONNX Runtime fp32 vs ONNX Runtime int8, in one run, one thread.

    .venv/bin/python -m bench.onnx_bench [--repeats 200] [--crop 2.0]

Latency: one embedding of 3 s of real speech (a LibriSpeech test-other crop), the whole
``embed`` call (volume normalisation, mel front end, network, mean), the three models
interleaved round by round so that load on a shared machine hits them alike; p50 / p95
and the ratio to torch.

Quality: EER on LibriSpeech test-other, all ordered pairs of different utterances
(``nessa eval``'s protocol: Silero VAD speech only; the enrollment side is the whole
utterance, the test side the whole utterance or a seeded crop), symmetric: each model
embeds both sides. Printed as a markdown table.
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

import numpy as np

MODELS = ("ge2e-256", "ge2e-256-onnx", "ge2e-256-onnx-int8")


def _load_models() -> dict:
    from runtime_models.ge2e import GE2EEmbedder
    from runtime_models.ge2e_onnx import GE2EOnnxEmbedder, GE2EOnnxInt8Embedder

    return {"ge2e-256": GE2EEmbedder(), "ge2e-256-onnx": GE2EOnnxEmbedder(intra_op_num_threads=1),
            "ge2e-256-onnx-int8": GE2EOnnxInt8Embedder(intra_op_num_threads=1)}


def _load_speech(root: pathlib.Path) -> tuple[np.ndarray, list[np.ndarray]]:
    from speechcore.audio import load_audio_file
    from speechcore.vad import SileroVAD

    vad = SileroVAD()
    files = sorted(root.glob("*/*.flac"))
    speakers = np.array([f.parent.name for f in files])
    return speakers, [vad.speech_only(load_audio_file(f))[0] for f in files]


def _crop(wav: np.ndarray, seconds: float, seed: int) -> np.ndarray:
    window = int(seconds * 16000)
    if len(wav) <= window:
        return wav
    offset = int(np.random.default_rng(seed).integers(0, len(wav) - window + 1))
    return wav[offset:offset + window]


def _eer(scores: np.ndarray, speakers: np.ndarray) -> float:
    from nessa.metrics import equal_error_rate

    same = speakers[:, None] == speakers[None, :]
    valid = ~np.eye(len(speakers), dtype=bool)
    return 100 * equal_error_rate(scores[same & valid], scores[~same & valid])[0]


def run(repeats: int = 200, crop_seconds: float = 2.0, latency_seconds: float = 3.0,
        shared_data: pathlib.Path | None = None) -> dict:
    import torch

    from app.settings import Settings

    torch.set_num_threads(1)
    root = (shared_data or Settings.from_env().shared_data_dir) / "librispeech" / "test-other"
    if not root.is_dir():
        raise SystemExit(f"bench needs real speech at {root} (../shared/data beside the repository)")
    models = _load_models()
    speakers, speech = _load_speech(root)

    # latency: 3 s of speech, interleaved rounds
    query = next(_crop(w, latency_seconds, 0) for w in speech if len(w) >= latency_seconds * 16000)
    for model in models.values():
        for _ in range(10):
            model.embed([query])
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.embed([query])
            times[name].append((time.perf_counter() - start) * 1e3)

    # quality
    crops = [_crop(w, crop_seconds, i) for i, w in enumerate(speech)]
    eer, embeddings = {}, {}
    for name, model in models.items():
        full = np.concatenate([model.embed(speech[i:i + 16]) for i in range(0, len(speech), 16)])
        cropped = np.concatenate([model.embed(crops[i:i + 16]) for i in range(0, len(crops), 16)])
        embeddings[name] = (full, cropped)
        eer[name] = {"full": _eer(full @ full.T, speakers), "crop": _eer(cropped @ full.T, speakers)}
    reference = embeddings["ge2e-256"]
    cosine = {name: float(min(np.sum(embeddings[name][k] * reference[k], axis=1).min() for k in (0, 1)))
              for name in models}
    n = len(speakers)
    same = int(((speakers[:, None] == speakers[None, :]).sum()) - n)
    return {"latency": {name: (float(np.percentile(t, 50)), float(np.percentile(t, 95)))
                        for name, t in times.items()},
            "eer": eer, "min_cosine_to_torch": cosine, "files": n, "speakers": len(set(speakers)),
            "target_trials": same, "nontarget_trials": n * (n - 1) - same, "repeats": repeats,
            "crop_seconds": crop_seconds, "latency_seconds": latency_seconds,
            "audio_seconds": sum(len(w) for w in speech) / 16000}


def format_table(result: dict) -> str:
    torch_p50, torch_p95 = result["latency"]["ge2e-256"]
    crop = f"{result['crop_seconds']:g}-s crop"
    lines = [f"### GE2E: torch vs ONNX Runtime, {result['latency_seconds']:g} s of speech, one thread "
             f"({result['repeats']} interleaved repeats; {platform.processor() or platform.machine()})", "",
             f"EER: LibriSpeech test-other after VAD, {result['files']} utterances of {result['speakers']} "
             f"speakers ({result['audio_seconds'] / 60:.1f} min), all ordered pairs "
             f"({result['target_trials']} target / {result['nontarget_trials']} non-target), "
             "same model on both sides; test side full or cropped, enrollment side full.", "",
             f"| model | p50 ms | p95 ms | p50 vs torch | p95 vs torch | EER % full | EER % {crop} "
             "| min cosine to torch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in MODELS:
        p50, p95 = result["latency"][name]
        lines.append(f"| `{name}` | {p50:.2f} | {p95:.2f} | {p50 / torch_p50:.2f} | {p95 / torch_p95:.2f} | "
                     f"{result['eer'][name]['full']:.2f} | {result['eer'][name]['crop']:.2f} | "
                     f"{result['min_cosine_to_torch'][name]:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--crop", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(format_table(run(args.repeats, args.crop, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
