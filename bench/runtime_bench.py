"""Runtime and enrollment benchmark on real speech, one thread.

    .venv/bin/python -m bench.runtime_bench [--queries 60] [--seconds 3]

Builds a throw-away service (SQLite under a temporary folder, the bundled alignment),
enrolls the LibriSpeech test-other speakers (3 utterances each) through the real job
handler and reports enrollment throughput in x real time, then identifies crops of the
other utterances and reports p50/p95 latency split into decode, VAD, embedding,
alignment and search (the service's own stage timers), plus the whole identify call.
"""
from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import time

import numpy as np
import soundfile as sf


def _percentiles(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def run(n_queries: int = 60, crop_seconds: float = 3.0, shared_data: pathlib.Path | None = None) -> dict:
    import faiss
    import torch

    from app.store import db
    from app.services import recognition
    from app.services.container import Services
    from app.services.enrollment import submit_enrollment
    from app.settings import Settings
    from app.worker import build_worker

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    settings = Settings.from_env()
    root = (shared_data or settings.shared_data_dir) / "librispeech" / "test-other"
    if not root.is_dir():
        raise SystemExit(f"bench needs real speech at {root} (../shared/data beside the repository)")
    speakers = sorted(p for p in root.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings.replace(data_dir=pathlib.Path(tmp), database_url="", torch_threads=1)
        db.upgrade(settings.resolved_database_url)
        services = Services(settings)
        services.prepare()
        # Warm the models so that load time is not counted as throughput or latency.
        services.enroll_embedder.embed([np.zeros(16000, np.float32)])
        services.runtime_embedder.embed([np.zeros(16000, np.float32)])
        services.vad.speech_only(np.zeros(16000, np.float32))

        enroll_files, test_files = [], []
        from app.services.speakers import create_speaker

        for speaker_dir in speakers:
            files = sorted(speaker_dir.glob("*.flac"))
            chosen = [f for f in files if sf.info(str(f)).duration >= 4.0][:3]
            with services.session() as session:
                speaker = create_speaker(session, name=speaker_dir.name, external_id=None)
                session.commit()
                speaker_id = speaker.id
            for f in chosen:
                submit_enrollment(services, speaker_id, f.read_bytes())
                enroll_files.append(f)
            test_files += [f for f in files if f not in chosen]
        audio_seconds = sum(sf.info(str(f)).duration for f in enroll_files)
        worker = build_worker(services, worker_id="bench")
        started = time.perf_counter()
        while worker.run_once():
            pass
        enroll_wall = time.perf_counter() - started

        from silero_vad import load_silero_vad

        torchscript_vad = load_silero_vad()  # baseline: silero's TorchScript model, its own loop
        from enroll_models.campplus import CamPlusPlusEmbedder

        campplus_torch = CamPlusPlusEmbedder(backend="torch")  # baseline: CAM++ on torch
        campplus_torch.embed([np.zeros(16000, np.float32)])
        enroll_backend = getattr(services.enroll_embedder, "backend", "torch")
        torch.set_num_threads(1)  # importing silero_vad sets it too; keep one either way
        rng = np.random.default_rng(0)
        stage_ms: dict[str, list[float]] = {}
        total_ms, heavy_ms, torchscript_vad_ms, heavy_torch_ms = [], [], [], []
        for i in range(n_queries):
            wav, sr = sf.read(str(test_files[i % len(test_files)]), dtype="float32")
            n = int(crop_seconds * sr)
            start = int(rng.integers(0, max(1, len(wav) - n)))
            buffer = io.BytesIO()
            sf.write(buffer, wav[start:start + n], sr, format="WAV", subtype="PCM_16")
            data = buffer.getvalue()
            t0 = time.perf_counter()
            result = recognition.identify(services, data, top_k=5)
            total_ms.append((time.perf_counter() - t0) * 1e3)
            for stage, ms in result["timings_ms"].items():
                stage_ms.setdefault(stage, []).append(ms)
            # Baseline in the same run: the heavy enrollment model on the same speech.
            speech, _ = services.vad.speech_only(wav[start:start + n])
            t0 = time.perf_counter()
            services.enroll_embedder.embed([speech])
            heavy_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            campplus_torch.embed([speech])
            heavy_torch_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            with torch.inference_mode():
                torchscript_vad.reset_states()
                torchscript_vad.audio_forward(torch.from_numpy(np.ascontiguousarray(wav[start:start + n])), sr)
            torchscript_vad_ms.append((time.perf_counter() - t0) * 1e3)
        services.close()
    return {"enroll_audio_seconds": audio_seconds, "enroll_wall_seconds": enroll_wall,
            "enroll_x_realtime": audio_seconds / enroll_wall, "enrollments": len(enroll_files),
            "stages": {k: _percentiles(v) for k, v in stage_ms.items()},
            "identify_total": _percentiles(total_ms), "heavy_embed": _percentiles(heavy_ms),
            "torchscript_vad": _percentiles(torchscript_vad_ms), "heavy_embed_torch": _percentiles(heavy_torch_ms),
            "enroll_backend": enroll_backend,
            "queries": n_queries, "crop_seconds": crop_seconds}


def format_report(result: dict) -> str:
    lines = [f"### Identify latency, {result['crop_seconds']:.0f}-s queries, one thread "
             f"({result['queries']} queries, 10 enrolled speakers)", "",
             "| stage | p50 ms | p95 ms |", "| --- | ---: | ---: |"]
    for stage in ("decode", "vad", "embed", "align", "search"):
        if stage in result["stages"]:
            p50, p95 = result["stages"][stage]
            lines.append(f"| {stage} | {p50:.2f} | {p95:.2f} |")
    p50, p95 = result["identify_total"]
    h50, h95 = result["heavy_embed"]
    e50 = result["stages"]["embed"][0]
    lines += [f"| **identify (whole call)** | {p50:.2f} | {p95:.2f} |",
              f"| baseline: enrollment model (CAM++, {result['enroll_backend']}) embedding of the same speech | "
              f"{h50:.2f} | {h95:.2f} |",
              f"| baseline: CAM++ on torch, the same speech | {result['heavy_embed_torch'][0]:.2f} | "
              f"{result['heavy_embed_torch'][1]:.2f} |",
              f"| baseline: silero's TorchScript VAD on the same audio (probabilities only) | "
              f"{result['torchscript_vad'][0]:.2f} | {result['torchscript_vad'][1]:.2f} |", "",
              f"Runtime embedding / enrollment-model embedding (p50): {e50 / h50:.2f}; "
              f"VAD stage / TorchScript VAD (p50): {result['stages']['vad'][0] / result['torchscript_vad'][0]:.2f}; "
              f"CAM++ {result['enroll_backend']} / CAM++ torch (p50): {h50 / result['heavy_embed_torch'][0]:.2f}", "",
              "### Enrollment throughput (worker: VAD + CAM++ + GE2E + database), one thread", "",
              "| enrollments | audio s | wall s | x real time |", "| ---: | ---: | ---: | ---: |",
              f"| {result['enrollments']} | {result['enroll_audio_seconds']:.1f} | "
              f"{result['enroll_wall_seconds']:.1f} | {result['enroll_x_realtime']:.1f} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(format_report(run(args.queries, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
