"""Calibration that adapts to the gallery's own domain (issue #12; docs/calibration.md).

The shipped calibration was fitted on LibriSpeech. A background job refits it on the
gallery's own audio: every completed enrollment's runtime-model vector is a query against
every *other* speaker's profile (in-domain impostor trials), and against its own speaker's
profile rebuilt without it (genuine trials, for the figures). ``nessa.gallery_calibration``
turns them into a strict map per scoring path: decisions can only become stricter than the
shipped ones. The fit is stored (``gallery_calibrations``) with its figures and an audit
event; requests decide with the newest fit of the alignment in force, and fall back to
the shipped calibration when there is none or the gallery was too small.

The fit is scheduled when the gallery has moved enough since the last one (an enrollment
completes or a speaker is deleted: ``schedule_if_due``), when a path is activated, or by
hand (``nessa models calibrate``).
"""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from app.errors import ApiError
from app.services.registry import record_event
from app.store import calibrations, db, embeddings, profiles
from app.store.job_queue import jobs
from nessa.calibration import FAR_TARGETS
from nessa.gallery_calibration import GalleryCalibration, fit_path, gallery_trials

CALIBRATE_JOB = "calibrate-gallery"
#: refit when this fraction of the gallery's speakers changed since the last fit (at least one)
REFIT_FRACTION = 0.1
#: the fit's cost is bounded: at most this many enrollments as queries and profiles as
#: candidates (a seeded sample of each); the tail estimate needs hundreds, not millions
MAX_QUERIES, MAX_PROFILES = 2000, 1000
PATHS = ("fused", "alignment")


@dataclasses.dataclass(frozen=True)
class InForce:
    """The calibration a request decides with."""

    source: str  # "shipped" or "gallery"
    mapping: GalleryCalibration | None = None
    fit_id: int | None = None

    def apply(self, llr: np.ndarray, fused: np.ndarray) -> np.ndarray:
        return llr if self.mapping is None else self.mapping.apply(llr, fused)


SHIPPED = InForce("shipped")


class GalleryCalibrations:
    """Per process: the newest fit of each alignment, read with one small query per request
    and parsed once per fit."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._parsed: dict[int, InForce] = {}
        self._lock = threading.Lock()

    def current(self, session, alignment: str) -> InForce:
        if not self.enabled:
            return SHIPPED
        fit_id = calibrations.newest_id(session, alignment)
        if fit_id is None:
            return SHIPPED
        with self._lock:
            cached = self._parsed.get(fit_id)
        if cached is None:
            row = calibrations.get(session, fit_id)
            mapping = GalleryCalibration.from_dict(row.maps)
            cached = InForce("gallery", mapping, fit_id) if mapping.paths else InForce("shipped", None, fit_id)
            with self._lock:
                self._parsed[fit_id] = cached
        return cached


# -- fitting -------------------------------------------------------------------------------
def _gallery(session, artifact, rng: np.random.Generator) -> dict:
    """What the fit reads: profiles of both spaces and the enrollments' own vectors (sampled)."""
    enrolled = {p.speaker_id: p.vector for p in profiles.read(session, artifact.target_version)}
    runtime = {p.speaker_id: p.vector for p in profiles.read(session, artifact.source_version)}
    # queries: vectors the runtime model itself produced from the enrollment's audio
    items = [row for row in embeddings.enrollment_vectors(session, artifact.source_version)
             if not row[4] and row[1] in enrolled]
    item_enroll = {row[0]: row[2] for row in embeddings.enrollment_vectors(session, artifact.target_version)}
    items = [row for row in items if row[0] in item_enroll]
    if len(items) > MAX_QUERIES:
        items = [items[i] for i in sorted(rng.choice(len(items), MAX_QUERIES, replace=False))]
    speakers = sorted(enrolled)
    if len(speakers) > MAX_PROFILES:
        speakers = sorted(rng.choice(speakers, MAX_PROFILES, replace=False).tolist())
    return {"enrolled": enrolled, "runtime": runtime, "items": items, "item_enroll": item_enroll,
            "speakers": speakers}


def _fit_paths(artifact, gallery: dict) -> dict:
    scorer, items = artifact.scorer, gallery["items"]
    if not items:
        return {}
    fitted = {}
    for path in PATHS:
        speakers = [s for s in gallery["speakers"] if path == "alignment" or s in gallery["runtime"]]
        if not speakers:
            continue
        column = {s: j for j, s in enumerate(speakers)}
        owner = np.array([column.get(row[1], -1) for row in items])
        seconds = np.array([row[3] if row[3] is not None else np.nan for row in items], dtype=np.float64)
        nontargets, targets = gallery_trials(
            scorer, np.stack([row[2] for row in items]), seconds, owner,
            np.stack([gallery["enrolled"][s] for s in speakers]),
            np.stack([gallery["runtime"][s] for s in speakers]) if path == "fused" else None,
            items_enroll=np.stack([gallery["item_enroll"][row[0]] for row in items]))
        thresholds = {name: float(scorer.candidate_threshold(fused=(path == "fused"), name=name)) for name in FAR_TARGETS}
        fit = fit_path(nontargets, targets, thresholds, n_profiles=len(speakers))
        if fit is not None:
            fitted[path] = fit
    return fitted


def fit_gallery(services, *, actor: str, seed: int = 0) -> dict:
    """Fit the calibration on the gallery of the path in force, store it and log it."""
    with services.session() as session:
        path = services.paths.current(session)
        artifact = path.artifact
        change_id = profiles.newest_change_id(session)  # read first: later changes count as new
        gallery = _gallery(session, artifact, np.random.default_rng(seed))
        db.end_read(session)
    fitted = GalleryCalibration(_fit_paths(artifact, gallery))
    with services.session() as session:
        row = calibrations.add(session, alignment=artifact.name, enrollment_space=path.enrollment_space,
                               runtime_model=path.runtime_model, n_profiles=len(gallery["enrolled"]),
                               n_enrollments=len(gallery["items"]), change_id=change_id,
                               maps=fitted.to_dict(), actor=actor)
        summary = describe(row)
        record_event(session, actor, "calibrate", "alignment", artifact.name,
                     **{k: v for k, v in summary.items() if k != "paths"},
                     trials={p: {"nontargets": m["n_nontargets"], "targets": m["n_targets"]}
                             for p, m in summary["paths"].items()})
        session.commit()
    return summary


def describe(row) -> dict:
    """A stored fit as GET /v1/models shows it."""
    return {"fit_id": row.id, "source": "gallery" if row.maps else "shipped", "alignment": row.alignment,
            "fitted_at": row.created_at.isoformat(), "n_profiles": row.n_profiles,
            "n_enrollments": row.n_enrollments, "paths": dict(row.maps)}


def newest_fit(session, alignment: str) -> dict | None:
    row = calibrations.newest(session, alignment)
    return None if row is None else describe(row)


# -- scheduling ----------------------------------------------------------------------------
def refit_due(session, artifact) -> bool:
    """Whether the gallery moved enough since the newest fit of ``artifact`` (or has none)."""
    last = calibrations.newest(session, artifact.name)
    if last is None:
        return profiles.count(session, artifact.target_version) > 0
    changed = calibrations.changes_since(session, artifact.target_version, last.change_id)
    return changed >= max(1, math.ceil(REFIT_FRACTION * last.n_profiles))


def schedule_if_due(services) -> bool:
    """Queue a refit when one is due and none is waiting (its own short transaction)."""
    if not services.settings.gallery_calibration:
        return False
    with services.session() as session:
        if jobs.unfinished_count(session, kinds=[CALIBRATE_JOB]):
            return False
        try:
            artifact = services.paths.current(session).artifact
        except ApiError:  # no path in force: nothing to calibrate
            return False
        if not refit_due(session, artifact):
            return False
        jobs.enqueue(session, CALIBRATE_JOB, {"actor": "gallery-change"},
                     max_attempts=services.settings.job_max_attempts)
        session.commit()
    return True


def process_calibration(services, ctx) -> dict:
    """Job handler: refit on the gallery as it is now."""
    ctx.set_progress(0.05)
    return fit_gallery(services, actor=ctx.payload.get("actor", "worker"))
