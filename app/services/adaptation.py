"""`nessa align adapt --from-gallery`: fine-tune the active alignment on the gallery's own
in-domain pairs (retained enrollment audio embedded by both models).

In-domain speakers are what moves the alignment most (docs/nessa-experiments.md), and a
real gallery holds exactly those. Only the query side of the alignment changes, so the
stored profile vectors stay valid; the adapted artifact records its parent.
"""
from __future__ import annotations

import numpy as np
import soundfile as sf
import sqlalchemy as sa

from app.store import embeddings, models

#: besides the whole utterance, crops of these lengths (seconds) from its speech
CROP_SECONDS = (2.0, 1.0)


def gallery_pairs(services, artifact, *, seed: int = 0):
    """(source (N, d_runtime), target (N, d_enroll), speaker (N,)) from every completed
    enrollment: the stored full-utterance embeddings, plus crops of retained audio embedded
    again by both models."""
    source_model = services.runtime_embedder
    target_model = services.enroll_embedder
    if (source_model.version, target_model.version) != (artifact.source_version, artifact.target_version):
        raise ValueError(f"the active alignment maps {artifact.source_version} -> {artifact.target_version}, "
                         f"the service runs {source_model.version} -> {target_model.version}")
    rng = np.random.default_rng(seed)
    sources, targets, speakers = [], [], []
    with services.session() as session:
        enrollments = session.execute(
            sa.select(models.Enrollment.id, models.Enrollment.speaker_id, models.Enrollment.audio_path)
            .where(models.Enrollment.status == "done").order_by(models.Enrollment.id)).all()
        stored = embeddings.vectors_by_enrollment_and_model(session, [source_model.version, target_model.version])
    for enrollment in enrollments:
        source = stored.get((enrollment.id, source_model.version))
        target = stored.get((enrollment.id, target_model.version))
        if source is not None and target is not None:
            sources.append(source), targets.append(target), speakers.append(enrollment.speaker_id)
        if not enrollment.audio_path:
            continue
        try:
            wav, _ = sf.read(enrollment.audio_path, dtype="float32")
        except (OSError, RuntimeError):
            continue
        speech, _ = services.vad.speech_only(wav)
        crops = []
        for seconds in CROP_SECONDS:
            n = int(seconds * 16000)
            if len(speech) > n:
                start = int(rng.integers(0, len(speech) - n))
                crops.append(speech[start:start + n])
        if crops:
            sources.extend(source_model.embed(crops))
            targets.extend(target_model.embed(crops))
            speakers.extend([enrollment.speaker_id] * len(crops))
    if not sources:
        raise ValueError("the gallery has no completed enrollments to adapt on")
    return (np.asarray(sources, dtype=np.float32), np.asarray(targets, dtype=np.float32),
            np.asarray(speakers, dtype=np.int64))
