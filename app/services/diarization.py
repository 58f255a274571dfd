"""Diarization with naming: who spoke when, with clusters named against the gallery.

Short recordings are answered inline; longer ones become a `diarize` job whose result
(the same JSON) is read from `GET /v1/jobs/{id}`.
"""
from __future__ import annotations

import functools
import pathlib
import uuid

import numpy as np
import soundfile as sf

from jobqueue import PermanentJobError

from app.store.job_queue import jobs
from app.store import profiles
from app.errors import bad_request
from app.services.audio_input import SAMPLE_RATE, decode_upload
from app.services.speakers import speaker_names

DIARIZE_JOB = "diarize"


@functools.lru_cache(maxsize=1)
def _overlap_detector():
    from diarizer.overlap import OverlapDetector

    return OverlapDetector()


def load_gallery(services, *, enroll_space: str, runtime_space: str, candidates=None):
    """Profiles as arrays for naming; None when nothing is enrolled."""
    from diarizer import Gallery

    with services.session() as session:
        enrolled = profiles.read(session, enroll_space, candidates or None)
        if not enrolled:
            return None, {}
        ids = [p.speaker_id for p in enrolled]
        runtime = {p.speaker_id: p.vector for p in profiles.read(session, runtime_space, ids)}
        runtime_dim = profiles.dim_of_space(session, runtime_space)
        names = speaker_names(session, ids)
    enroll_vectors = np.stack([p.vector for p in enrolled])
    runtime_vectors = None
    if runtime_dim:
        runtime_vectors = np.full((len(ids), runtime_dim), np.nan, dtype=np.float32)
        for i, speaker_id in enumerate(ids):
            if speaker_id in runtime:
                runtime_vectors[i] = runtime[speaker_id]
    return Gallery(ids, enroll_vectors, runtime_vectors, labels=[str(i) for i in ids]), names


def build_diarizer(services, artifact=None):
    """The service's diarizer: runtime model, active alignment, overlap detection per settings."""
    from diarizer import Diarizer

    overlap = _overlap_detector() if services.settings.diarize_overlap_detection else None
    if artifact is None:
        artifact = services.path().artifact
    return Diarizer(services.embedder(artifact.source_version), artifact, overlap_detector=overlap)


def diarize_wav(services, wav: np.ndarray, *, candidates=None, num_speakers=None, min_speakers=None,
                max_speakers=None, name_against_gallery: bool = True) -> dict:
    from diarizer import HintError

    path = services.path()  # one snapshot for the whole recording
    artifact = path.artifact
    gallery, names = (load_gallery(services, enroll_space=artifact.target_version,
                                   runtime_space=artifact.source_version, candidates=candidates)
                      if name_against_gallery else (None, {}))
    diarizer = build_diarizer(services, artifact)
    try:
        result = diarizer.diarize(wav, gallery=gallery, num_speakers=num_speakers,
                                  min_speakers=min_speakers, max_speakers=max_speakers)
    except HintError as exc:
        raise bad_request("invalid_speaker_hints", str(exc), num_speakers=num_speakers,
                          min_speakers=min_speakers, max_speakers=max_speakers) from exc
    body = result.to_dict()
    for segment in body["segments"]:
        speaker_id = segment.pop("speaker_id", None)
        segment["speaker"] = {"id": int(speaker_id), "name": names.get(int(speaker_id))} if speaker_id is not None else None
    for speaker in body.get("speakers", []):
        speaker_id = speaker.pop("speaker_id", None)
        speaker["speaker"] = {"id": int(speaker_id), "name": names.get(int(speaker_id))} if speaker_id is not None else None
    body["models"] = path.versions()
    return body


def rttm_text(body: dict, uri: str = "audio") -> str:
    """RTTM of a diarization response, naming enrolled speakers by their names."""
    from diarizer import rttm_lines

    return rttm_lines([{**seg, "label": seg["speaker"]["name"] if (seg.get("speaker") or {}).get("name")
                        else seg["label"]} for seg in body["segments"]], uri)


def submit_or_run(services, data: bytes, *, created_by_key_id: int | None = None, **options) -> tuple[int, dict]:
    """Decode and validate; run inline (200) or queue a job (202) for long recordings,
    readable by the key that asked (``created_by_key_id``) and admin keys only."""
    decoded = decode_upload(services, data)
    from diarizer import HintError, validate_hints

    try:
        validate_hints(options.get("num_speakers"), options.get("min_speakers"), options.get("max_speakers"))
    except HintError as exc:
        raise bad_request("invalid_speaker_hints", str(exc)) from exc
    if decoded.duration_s <= services.settings.diarize_inline_max_seconds:
        return 200, diarize_wav(services, decoded.wav, **options)
    folder = services.settings.diarize_audio_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.flac"
    sf.write(path, decoded.wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    with services.session() as session:
        job = jobs.enqueue(session, DIARIZE_JOB, {"audio_path": str(path), "options": options},
                           max_attempts=services.settings.job_max_attempts, created_by_key_id=created_by_key_id)
        session.commit()
        return 202, {"job": {"id": job.id, "kind": job.kind, "status": job.status},
                     "duration_s": round(decoded.duration_s, 3)}


def process_diarize_job(services, ctx) -> dict:
    path = pathlib.Path(ctx.payload["audio_path"])
    if not path.exists():
        raise PermanentJobError(f"stored audio {path.name} is missing")
    wav, _ = sf.read(path, dtype="float32")
    result = diarize_wav(services, wav, **ctx.payload.get("options", {}))
    path.unlink(missing_ok=True)
    return result
