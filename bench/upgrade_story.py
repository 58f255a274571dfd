"""The model-upgrade story on all of LibriSpeech test-other, through the HTTP API, with
identification accuracy after every step (docs/model-upgrades.md).

    .venv/bin/python -m bench.upgrade_story [--crop 2 --crop 1] [--json OUT]

Each of the 10 speakers enrolls its first 3 utterances long enough to enroll (sorted by
name); the other 70 are
identified whole and as seeded crops. Steps: the old system (GE2E on both sides) ->
enrollment upgraded to CAM++ by re-embedding the retained audio -> runtime upgraded to
the int8 ONNX GE2E (first scored through its alignment alone, then fused once its runtime
vectors are re-embedded) -> rollback; and, on a second database without retained audio,
the enrollment upgrade by bridging. Per step and condition: identified (accepted and
right, %), top-1 (right first candidate, %), and the unknown-speaker false accepts are not
measured here (every query is enrolled); gates run on the same folder.
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

OLD_PATH = "ridge-ge2e256-to-ge2e256-v1"
TWO_TOWER = "nessa-twotower-ge2e256-to-campplus192-v2"
INT8_PATH = "nessa-twotower-ge2e256int8-to-campplus192-v2"  # int8 ONNX GE2E queries vs CAM++ profiles
BRIDGE = "ridge-ge2e256-to-campplus192-v1"
N_ENROLL = 3


class Api:
    def __init__(self, settings):
        from app import create_app
        from app.store import db
        from app.services.keys import create_api_key
        from app.services.container import Services

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db.upgrade(settings.resolved_database_url)
        self.services = Services(settings)
        self.client = create_app(settings, services=self.services, start_worker=False).test_client()
        with self.services.session() as session:
            key, _ = create_api_key(session, name="bench", scopes=["admin"])
            session.commit()
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, url, body=None, files=None):
        if files is not None:
            response = self.client.post(url, data={"audio": (io.BytesIO(files), "a.wav")}, headers=self.headers,
                                        content_type="multipart/form-data")
        else:
            response = self.client.post(url, json=body, headers=self.headers)
        assert response.status_code < 300, (url, response.status_code, response.get_json())
        return response.get_json()

    def get(self, url):
        return self.client.get(url, headers=self.headers).get_json()

    def drain(self):
        from app.worker import run_pending

        run_pending(self.services, worker_id="bench", wait=True)


def _wav_bytes(wav: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _crop(wav: np.ndarray, seconds: float | None, seed: int) -> np.ndarray:
    if seconds is None or len(wav) <= int(seconds * 16000):
        return wav
    n = int(seconds * 16000)
    start = int(np.random.default_rng(seed).integers(0, len(wav) - n))
    return wav[start:start + n]


def load_corpus(root: pathlib.Path, crops):
    from speechcore.audio import load_audio_file
    from speechcore.vad import SileroVAD

    vad = SileroVAD()
    enroll, queries = {}, []
    for i, directory in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = sorted(directory.glob("*.flac"))
        # enroll from the first utterances long enough (>= 3 s of speech); test on the rest
        chosen = [f for f in files if f.stat().st_size > 150_000][:N_ENROLL]
        enroll[directory.name] = [f.read_bytes() for f in chosen]
        for j, path in enumerate(f for f in files if f not in chosen):
            wav = load_audio_file(path)
            speech, _ = vad.speech_only(wav)  # crops are cut from speech, as `nessa eval` cuts them
            for seconds in crops:
                audio = wav if seconds is None else _crop(speech, seconds, 1000 * i + j)
                queries.append((directory.name, "full" if seconds is None else f"{seconds:g}s", _wav_bytes(audio)))
    return enroll, queries


def measure(api, ids, queries) -> dict:
    figures, paths = {}, set()
    for speaker, condition, audio in queries:
        body = api.post("/v1/identify", files=audio)
        paths.add(json.dumps(body["models"], sort_keys=True))
        row = figures.setdefault(condition, {"n": 0, "identified": 0, "top1": 0, "scoring": set()})
        row["n"] += 1
        row["identified"] += bool(body["speaker"]) and body["speaker"]["id"] == ids[speaker]
        row["top1"] += bool(body["candidates"]) and body["candidates"][0]["id"] == ids[speaker]
        row["scoring"].update(c["scoring"] for c in body["candidates"])
    assert len(paths) == 1, paths
    return {"models": json.loads(paths.pop()),
            "conditions": {c: {"identified": round(100 * r["identified"] / r["n"], 1),
                               "top1": round(100 * r["top1"] / r["n"], 1), "queries": r["n"],
                               "scoring": sorted(r["scoring"])} for c, r in figures.items()}}


def _enroll(api, enroll) -> dict:
    ids = {}
    for name, files in enroll.items():
        ids[name] = api.post("/v1/speakers", {"name": name})["id"]
        for data in files:
            api.post(f"/v1/speakers/{ids[name]}/enrollments", files=data)
    api.drain()
    return ids


def _gate(api, alignment, eval_dir) -> dict:
    job = api.post(f"/v1/alignments/{alignment}/evaluate", {"eval_dir": str(eval_dir), "n_enroll": N_ENROLL})["job"]
    api.drain()
    result = api.get(f"/v1/jobs/{job['id']}")["result"]
    api.post("/v1/deployments", {"alignment": alignment, "force": not result["passed"]})
    return {"passed": result["passed"], "candidate": result["candidate"]["conditions"],
            "in_force": result["baseline"]["conditions"] if result["baseline"] else None}


def run(root: pathlib.Path, crops) -> dict:
    import torch

    from app.settings import Settings

    torch.set_num_threads(1)
    enroll, queries = load_corpus(root, crops)
    steps, gates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=pathlib.Path(tmp) / "retained", enroll_model="ge2e-256",
                            runtime_model="ge2e-256", default_alignment=OLD_PATH)
        api = Api(settings)
        ids = _enroll(api, enroll)
        steps.append(("0. old system: GE2E both sides", measure(api, ids, queries)))
        api.post("/v1/models", {"name": "campplus-192"})
        api.post("/v1/models/campplus-192/reembed")
        api.drain()
        gates["enrollment upgrade"] = _gate(api, TWO_TOWER, root)
        steps.append(("1. enrollment upgraded to CAM++ (re-embedded)", measure(api, ids, queries)))
        api.post("/v1/models", {"name": "ge2e-256-onnx-int8"})
        gates["runtime upgrade"] = _gate(api, INT8_PATH, root)
        steps.append(("2a. runtime upgraded to int8 ONNX, before re-embedding", measure(api, ids, queries)))
        api.post("/v1/models/ge2e-256-onnx-int8/reembed")
        api.drain()
        steps.append(("2b. runtime vectors re-embedded", measure(api, ids, queries)))
        api.post("/v1/deployments/rollback")
        steps.append(("rollback", measure(api, ids, queries)))
        api.services.close()

        settings = settings.replace(data_dir=pathlib.Path(tmp) / "not-retained", retain_enrollment_audio=False)
        api = Api(settings)
        ids = _enroll(api, enroll)
        steps.append(("0'. old system, audio not retained", measure(api, ids, queries)))
        api.post("/v1/models", {"name": "campplus-192"})
        api.post("/v1/models/campplus-192/reembed", {"bridge": BRIDGE})
        api.drain()
        api.post("/v1/deployments", {"alignment": BRIDGE, "force": True})
        steps.append(("1'. enrollment upgraded by bridging (ridge GE2E -> CAM++)", measure(api, ids, queries)))
        api.services.close()
    return {"steps": steps, "gates": gates}


def format_table(report: dict) -> str:
    conditions = list(report["steps"][0][1]["conditions"])
    lines = ["| step | runtime model -> enrollment space (alignment) | scoring | "
             + " | ".join(f"identified / top-1 % ({c})" for c in conditions) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in conditions) + " |"]
    for label, result in report["steps"]:
        m = result["models"]
        scoring = ", ".join(sorted({s for c in result["conditions"].values() for s in c["scoring"]}))
        cells = [f"{result['conditions'][c]['identified']:.1f} / {result['conditions'][c]['top1']:.1f}"
                 for c in conditions]
        lines.append(f"| {label} | {m['runtime_model']} -> {m['enrollment_space']} ({m['alignment']}) | {scoring} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from app.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", default=str(Settings.from_env().shared_data_dir / "librispeech" / "test-other"),
                        help="<speaker>/<utterance> folder (default: test-other under the shared_data_dir setting)")
    parser.add_argument("--crop", type=float, action="append", help="also identify crops of this many seconds")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.eval_dir)
    if not root.is_dir():
        print(f"no evaluation folder at {root}", file=sys.stderr)
        return 2
    crops = [None] + (args.crop or [])
    started = time.perf_counter()
    report = run(root, crops)
    print(format_table(report))
    for name, gate in report["gates"].items():
        print(f"\ngate, {name}: {'passed' if gate['passed'] else 'FAILED (forced for the story)'}; "
              f"candidate {json.dumps(gate['candidate'])}; in force {json.dumps(gate['in_force'])}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
