"""The activation gate's measurement: a candidate runtime path against the path in force,
on the same trials, in the same run, scored exactly as the service scores.

Trials: a `<speaker>/<utterance>` folder (default: LibriSpeech test-other). Each speaker's
first `n_enroll` utterances make the profile (enrollment-space mean and runtime-space
mean, as the enrollment job stores them); every other utterance is a query, whole and as a
seeded crop of its speech of each `crops` length (default 2 s and 1 s). Per condition: EER
over all query x profile trials, closed-set top-1 accuracy, and the share of queries
identified correctly at the path's own operating threshold (what /v1/identify returns).
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import sqlalchemy as sa

from app.store import models
from app.errors import ApiError
from app.services import registry
from nessa.metrics import equal_error_rate
from speechcore.audio import load_audio_file
from speechcore.embedder import l2_normalise

AUDIO_SUFFIXES = (".wav", ".flac")
DEFAULT_TOLERANCE = {"eer_points": 0.5, "top1_points": 1.0}
#: query conditions: whole utterances and crops of the speech (short queries are where
#: runtime paths differ most)
DEFAULT_CROPS = (None, 2.0, 1.0)


def read_eval_folder(folder: pathlib.Path, n_enroll: int, max_speakers: int | None = None,
                     max_queries: int | None = None) -> tuple[list[str], dict[str, list[pathlib.Path]]]:
    if not folder.is_dir():
        raise ApiError(400, "eval_set_not_found", f"No evaluation folder at {folder}.", {"path": str(folder)})
    speakers = {}
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if len(files) > n_enroll:
            speakers[directory.name] = files[:n_enroll + max_queries] if max_queries else files
    names = sorted(speakers)[:max_speakers] if max_speakers else sorted(speakers)
    if len(names) < 2:
        raise ApiError(400, "eval_set_too_small", f"{folder} needs at least two <speaker>/ folders with more than "
                       f"{n_enroll} audio files each.", {"path": str(folder)})
    return names, {n: speakers[n] for n in names}


def _crop(speech: np.ndarray, seconds: float | None, rng: np.random.Generator) -> np.ndarray:
    if seconds is None:
        return speech
    n = int(seconds * 16000)
    if len(speech) <= n:
        return speech
    start = int(rng.integers(0, len(speech) - n))
    return speech[start:start + n]


def _condition_name(seconds: float | None) -> str:
    return "full" if seconds is None else f"{seconds:g}s"


def measure_paths(services, artifacts: list, folder: pathlib.Path, *, n_enroll: int = 3,
                  crops: tuple = DEFAULT_CROPS, max_speakers: int | None = None, max_queries: int | None = None,
                  seed: int = 0) -> tuple[dict, list[dict]]:
    """Figures for each artifact's path on one shared set of trials."""
    names, files = read_eval_folder(folder, n_enroll, max_speakers, max_queries)
    versions = sorted({a.source_version for a in artifacts} | {a.target_version for a in artifacts})
    rng = np.random.default_rng(seed)
    enroll_speech, queries = {}, []  # queries: (speaker, condition, speech)
    digest = hashlib.sha256()
    for name in names:
        enroll_speech[name] = []
        for i, path in enumerate(files[name]):
            digest.update(f"{name}/{path.name}".encode())
            speech, _ = services.vad.speech_only(load_audio_file(path))
            if len(speech) < 8000:
                continue
            if i < n_enroll:
                enroll_speech[name].append(speech)
            else:
                queries.extend((name, _condition_name(s), _crop(speech, s, rng)) for s in crops)
        if not enroll_speech[name]:
            raise ApiError(400, "eval_set_unusable", f"speaker {name!r} has no enrollment utterance with speech",
                           {"speaker": name})
    embeddings = {}
    for version in versions:
        model = services.embedder(version)
        profiles = np.stack([l2_normalise(model.embed(enroll_speech[n]).mean(axis=0)) for n in names])
        embeddings[version] = (profiles, model.embed([q[2] for q in queries]))
    labels = np.array([names.index(q[0]) for q in queries])
    durations = np.array([len(q[2]) / 16000 for q in queries])
    conditions = np.array([q[1] for q in queries])
    results = []
    for artifact in artifacts:
        enroll_profiles = embeddings[artifact.target_version][0]
        runtime_profiles, query_vectors = embeddings[artifact.source_version]
        # exactly the service's scoring (recognition._score): every profile has both vectors
        llr, _ = artifact.scorer.score_candidates(query_vectors, enroll_profiles, runtime_profiles,
                                                  seconds=durations)
        llr = np.asarray(llr, dtype=np.float64)
        threshold = float(artifact.scorer.candidate_threshold(fused=True))
        figures = {}
        for condition in dict.fromkeys(conditions):
            rows = conditions == condition
            scores, truth = llr[rows], labels[rows]
            target = scores[np.arange(len(truth)), truth]
            mask = np.ones_like(scores, dtype=bool)
            mask[np.arange(len(truth)), truth] = False
            eer, _ = equal_error_rate(target, scores[mask])
            best = scores.argmax(axis=1)
            figures[condition] = {
                "eer": round(100 * float(eer), 3),
                "top1": round(100 * float(np.mean(best == truth)), 2),
                "identified_at_threshold": round(100 * float(np.mean((best == truth) & (scores.max(axis=1) >= threshold))), 2),
                "queries": int(rows.sum()), "target_trials": int(len(target)), "nontarget_trials": int(mask.sum())}
        results.append({"alignment": artifact.name, "runtime_model": artifact.source_version,
                        "enrollment_space": artifact.target_version, "threshold": threshold, "conditions": figures})
    eval_set = {"path": str(folder), "speakers": len(names), "queries": len(queries) // max(1, len(crops)),
                "n_enroll": n_enroll, "crops": [_condition_name(c) for c in crops], "seed": seed,
                "files_sha256": digest.hexdigest()}
    return eval_set, results


def gate(candidate: dict, baseline: dict | None, tolerance: dict) -> bool:
    """Not worse than the path in force beyond the tolerance, on every condition."""
    if baseline is None:
        return True
    for condition, c in candidate["conditions"].items():
        b = baseline["conditions"][condition]
        if c["eer"] > b["eer"] + tolerance["eer_points"] or c["top1"] < b["top1"] - tolerance["top1_points"]:
            return False
    return True


def evaluate_alignment(services, alignment: str, *, folder: pathlib.Path, actor: str, n_enroll: int = 3,
                       crops: tuple = DEFAULT_CROPS, max_speakers: int | None = None,
                       max_queries: int | None = None, tolerance: dict | None = None, seed: int = 0) -> dict:
    """Measure `alignment`'s path against the path in force; store the result (and the
    'evaluated' state) so `activate` can apply the gate."""
    tolerance = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    with services.session() as session:
        row = registry.get_artifact_row(session, alignment)
        if row.state == "retired":
            raise ApiError(409, "alignment_retired", f"{alignment!r} is retired.", {"name": alignment})
        candidate_artifact = services.paths.artifact(row.name, row.path, row.sha256)
        current = registry.current_deployment(session)
    baseline_artifact = services.path().artifact if current is not None else None
    artifacts = [candidate_artifact] + ([baseline_artifact] if baseline_artifact is not None
                                        and baseline_artifact.name != alignment else [])
    eval_set, results = measure_paths(services, artifacts, pathlib.Path(folder), n_enroll=n_enroll, crops=crops,
                                      max_speakers=max_speakers, max_queries=max_queries, seed=seed)
    candidate = results[0]
    baseline = results[1] if len(results) > 1 else (candidate if baseline_artifact is not None else None)
    passed = gate(candidate, baseline if baseline is not candidate else None, tolerance)
    with services.session() as session:
        record = models.PathEvaluation(alignment=alignment,
                                       baseline_alignment=baseline_artifact.name if baseline_artifact else None,
                                       eval_set=eval_set, candidate=candidate, baseline=baseline,
                                       tolerance=tolerance, passed=passed, actor=actor)
        session.add(record)
        session.flush()
        summary = {"id": record.id, "passed": passed, "eval_set": eval_set["path"],
                   "conditions": candidate["conditions"],
                   "baseline": baseline_artifact.name if baseline_artifact else None}
        row = registry.get_artifact_row(session, alignment)
        row.evaluation = summary
        if row.state == "registered":
            row.state = "evaluated"
        for version in (row.source_version, row.target_version):
            model = session.scalar(sa.select(models.ModelVersion).filter_by(name=version))
            model.evaluation = {**summary, "alignment": alignment}
            if model.state == "registered":
                model.state = "evaluated"
        registry.record_event(session, actor, "evaluate", "alignment", alignment, evaluation=record.id,
                              passed=passed, baseline=summary["baseline"])
        session.commit()
        return evaluation_to_dict(record)


def evaluation_to_dict(record: models.PathEvaluation) -> dict:
    return {"id": record.id, "alignment": record.alignment, "baseline_alignment": record.baseline_alignment,
            "passed": record.passed, "tolerance": record.tolerance, "eval_set": record.eval_set,
            "candidate": record.candidate, "baseline": record.baseline, "actor": record.actor,
            "created_at": record.created_at.isoformat()}
