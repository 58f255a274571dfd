"""Identification and verification on the runtime path.

A query is embedded by the light runtime model only. Each candidate profile is scored
with a calibrated log-likelihood ratio from the active alignment artifact:
  * "fused": the symmetric runtime score (query vs the profile's runtime-space vector)
    combined with the cross-model score (aligned query vs its enrollment-space vector);
  * "alignment": the cross-model score alone, for profiles without a runtime vector.
Responses say how each candidate was scored, whether its profile was bridged from an
older enrollment space (audio not retained), and which deployment and model versions were
used (one snapshot of the path in force per request).
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

from app.errors import ApiError
from app.services.artifact_check import keeps_target_space
from app.services.audio_input import prepare_audio
from app.services.gallery_calibration import InForce, newest_fit
from app.services.speakers import get_speaker, refuse_unknown_speakers, speaker_names
from app.store import db, profiles
from app.store.profiles import StoredProfile
from nessa.calibration import FAR_TARGETS, threshold_name
from nessa.scoring import merge_prepared, split_prepared

# Candidates pulled from each index before exact fused re-scoring.
PRESELECT = 50


def _embed_query(services, session, data: bytes):
    prepared = prepare_audio(services, data, min_speech_s=services.settings.min_runtime_speech_seconds)
    timings = dict(prepared.timings_ms)
    # One snapshot of the path in force for the whole request: a switch happening now
    # affects the next request, never half of this one.
    path = services.paths.current(session)
    db.end_read(session)
    t0 = time.perf_counter()
    query_runtime = services.embedder(path.runtime_model).embed([prepared.speech])[0]
    t1 = time.perf_counter()
    query_aligned = path.artifact.transform(query_runtime[None, :])[0]
    t2 = time.perf_counter()
    timings.update(embed=(t1 - t0) * 1e3, align=(t2 - t1) * 1e3)
    return prepared, path, query_runtime, query_aligned, timings


# keyed by id() of the loaded artifact object (kept alive in the value, so ids are not reused)
_untouched_by_artifact: dict[int, tuple[object, bool]] = {}


def _profiles_untouched(artifact) -> bool:
    entry = _untouched_by_artifact.get(id(artifact))
    if entry is None or entry[0] is not artifact:
        entry = _untouched_by_artifact[id(artifact)] = (artifact, keeps_target_space(artifact))
    return entry[1]


def _score(artifact, query_runtime, enrolled: dict[int, StoredProfile], runtime: dict[int, StoredProfile],
           speech_s: float | None, calibration: InForce):
    """Exact calibrated scores for the speakers with an enrollment-space profile (the others
    are not scorable). Each value: (LLR, scoring path, bridged). The LLR is the artifact's,
    through the gallery's own calibration where one is in force (only ever stricter)."""
    if not enrolled:
        return {}
    order = sorted(enrolled)
    # The artifact scores all candidates at once: its own comparison space, its own
    # normalisation (S-norm cohort) and calibration; profiles without a runtime vector are
    # scored through the alignment alone. The query-independent half is cached per profile.
    prepared = _PREPARED.get(artifact, [(i, enrolled[i].vector, runtime[i].vector if i in runtime else None)
                                        for i in order])
    llr, fused = artifact.scorer.score_prepared(query_runtime, prepared, seconds=speech_s)
    llr = calibration.apply(llr, fused)
    return {speaker_id: (float(llr[j]), "fused" if fused[j] else "alignment", enrolled[speaker_id].bridged)
            for j, speaker_id in enumerate(order)}


class PreparedProfiles:
    """Per-profile cache of what an artifact computes about a candidate before seeing the
    query (its vectors in the comparison space, its S-norm statistics). Keyed by the
    artifact object (loaded once per name and checksum, and kept alive here so its id is
    never reused) and the profile's vectors themselves, so a changed profile or another
    artifact never meets a stale entry."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._rows: collections.OrderedDict = collections.OrderedDict()
        self._artifacts: dict[int, object] = {}
        self._lock = threading.Lock()

    def get(self, artifact, profiles: list[tuple[int, np.ndarray, np.ndarray | None]]) -> dict:
        keys = [(id(artifact), speaker_id, enroll.tobytes(), None if rt is None else rt.tobytes())
                for speaker_id, enroll, rt in profiles]
        with self._lock:
            self._artifacts.setdefault(id(artifact), artifact)
            rows = [self._rows.get(key) for key in keys]
        missing = [j for j, row in enumerate(rows) if row is None]
        if missing:
            nan = np.full(artifact.source_dim, np.nan, dtype=np.float32)
            fresh = split_prepared(artifact.scorer.prepare_candidates(
                np.stack([profiles[j][1] for j in missing]),
                np.stack([nan if profiles[j][2] is None else profiles[j][2] for j in missing])))
            with self._lock:
                for j, row in zip(missing, fresh):
                    rows[j] = self._rows[keys[j]] = row
                while len(self._rows) > self.max_entries:
                    self._rows.popitem(last=False)
        return merge_prepared(rows)


_PREPARED = PreparedProfiles()


def _operating_point(services, far_target: float | None, calibration: InForce) -> dict:
    """The false-accept rate a decision is made at (the request's, else the setting's)."""
    far_target = services.settings.far_target if far_target is None else far_target
    return {"far_target": far_target, "threshold_name": threshold_name(far_target), "calibration": calibration.source}


def calibration_in_force(services) -> dict | None:
    """The calibration decisions are made with now, where it came from (shipped, or fitted
    on the gallery: when, on how many trials, with what figures), and its threshold per
    operating point and scoring path (None while no runtime path is in force)."""
    try:
        artifact = services.path().artifact
    except ApiError:
        return None
    scorer = artifact.scorer
    enabled = services.settings.gallery_calibration
    with services.session() as session:
        in_force = services.calibrations.current(session, artifact.name)
        fit = newest_fit(session, artifact.name) if enabled else None
    return {"source": in_force.source, "artifact": artifact.name, "far_target": services.settings.far_target,
            "gallery_calibration": enabled, "gallery_fit": fit,
            "thresholds": {name: {"fused": float(scorer.candidate_threshold(fused=True, name=name)),
                                  "alignment": float(scorer.candidate_threshold(fused=False, name=name))}
                           for name in FAR_TARGETS}}


def _threshold(artifact, path: str, operating_point: dict) -> float:
    """Both paths give calibrated LLRs, each with its own threshold for the operating point
    (chosen for that false-accept rate on the artifact's development trials)."""
    return float(artifact.scorer.candidate_threshold(fused=(path == "fused"), name=operating_point["threshold_name"]))


def _preselect(gallery, artifact, query_runtime, query_aligned, restrict) -> list[int]:
    """The speakers worth scoring exactly: the nearest in each index the query can meet."""
    hits = gallery.search(artifact.source_version, query_runtime, PRESELECT, restrict_to=restrict)
    if _profiles_untouched(artifact):
        hits += gallery.search(artifact.target_version, query_aligned, PRESELECT, restrict_to=restrict)
    elif (gallery.size(artifact.target_version) <= PRESELECT
          or gallery.size(artifact.source_version) < gallery.size(artifact.target_version)):
        # Shared-space artifact: the enrollment index cannot take the aligned query, so a
        # small gallery is scored whole, and so is one whose runtime vectors are still being
        # re-embedded after a runtime upgrade (the runtime index would miss those speakers);
        # otherwise the runtime index preselects.
        hits += [(i, 0.0) for i in gallery.ids(artifact.target_version) if restrict is None or i in restrict]
    return sorted({speaker_id for speaker_id, _ in hits})


def identify(services, data: bytes, *, top_k: int = 5, candidates: list[int] | None = None,
             far_target: float | None = None) -> dict:
    # One database session for the whole request. Profile vectors come from the in-memory
    # index, brought up to date with the change log; no read stays open while the audio
    # is decoded and embedded.
    with services.session() as session:
        if candidates:
            refuse_unknown_speakers(session, candidates)
            db.end_read(session)
        prepared, path, query_runtime, query_aligned, timings = _embed_query(services, session, data)
        return _identified(services, session, path, prepared, query_runtime, query_aligned, timings,
                           top_k=top_k, candidates=candidates, far_target=far_target)


def _identified(services, session, path, prepared, query_runtime, query_aligned, timings: dict, *, top_k: int,
                candidates: list[int] | None, far_target: float | None) -> dict:
    """The ranked candidates of one embedded query (identify's second half)."""
    artifact = path.artifact
    t0 = time.perf_counter()
    gallery = services.gallery
    gallery.sync(session)
    ids = _preselect(gallery, artifact, query_runtime, query_aligned, sorted(set(candidates)) if candidates else None)
    calibration = services.calibrations.current(session, artifact.name)
    scored = _score(artifact, query_runtime, gallery.profiles(artifact.target_version, ids),
                    gallery.profiles(artifact.source_version, ids), prepared.speech_s, calibration) if ids else {}
    names = speaker_names(session, list(scored))
    timings["search"] = (time.perf_counter() - t0) * 1e3
    ranked = sorted(((s, how, i, b) for i, (s, how, b) in scored.items() if i in names), reverse=True)[:top_k]
    best = ranked[0] if ranked else None
    operating_point = _operating_point(services, far_target, calibration)
    threshold = _threshold(artifact, best[1] if best else "fused", operating_point)
    accepted = best is not None and best[0] >= threshold
    return {
        "speaker": {"id": best[2], "name": names[best[2]]} if accepted else None,
        "score": best[0] if best else None,
        "threshold": threshold,
        "operating_point": operating_point,
        "scoring": best[1] if best else None,
        "candidates": [{"id": i, "name": names[i], "score": s, "scoring": how, "bridged_profile": b}
                       for s, how, i, b in ranked],
        "speech_seconds": round(prepared.speech_s, 3),
        "models": path.versions(),
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }


def _prepare_clips(services, clips: list[bytes], items: list[dict]) -> dict:
    """{index: prepared audio} of the clips that decode, hold enough speech and fit the
    batch's audio budget; each other clip's item gets its error (status, code, message, detail)."""
    budget_s, prepared = services.settings.max_audio_seconds, {}
    for i, data in enumerate(clips):
        try:
            clip = prepare_audio(services, data, min_speech_s=services.settings.min_runtime_speech_seconds)
            if clip.duration_s > budget_s:
                raise ApiError(413, "batch_audio_budget", "The clips of a batch may last "
                               f"{services.settings.max_audio_seconds:.0f} s together; this one goes past that.",
                               {"duration_seconds": round(clip.duration_s, 3),
                                "budget_left_seconds": round(budget_s, 3)})
        except ApiError as error:
            items[i]["error"] = {"status": error.status, **error.to_dict()}
            continue
        budget_s -= clip.duration_s
        prepared[i] = clip
    return prepared


def identify_batch(services, clips: list[bytes], *, top_k: int = 5, candidates: list[int] | None = None,
                   far_target: float | None = None) -> dict:
    """identify for several clips in one request: each decoded and checked on its own (a bad
    clip is an error in its item, not in the request), the good ones embedded in one batch
    by the runtime model, then each ranked as identify ranks it, all with one path in force.
    The clips' decoded audio together may last at most NESSA_MAX_AUDIO_SECONDS (the cost of
    one maximal request); clips past that budget are refused item by item."""
    items: list[dict] = [{"index": i} for i in range(len(clips))]
    with services.session() as session:
        if candidates:
            refuse_unknown_speakers(session, candidates)  # 404 before any work
        db.end_read(session)
        prepared = _prepare_clips(services, clips, items)
        path = services.paths.current(session)
        db.end_read(session)
        order = sorted(prepared)
        t0 = time.perf_counter()
        queries = services.embedder(path.runtime_model).embed([prepared[i].speech for i in order]) if order else None
        t1 = time.perf_counter()
        aligned = path.artifact.transform(queries) if order else None
        t2 = time.perf_counter()
        for row, i in enumerate(order):
            # the batch's embedding and alignment time, shared out per clip
            timings = dict(prepared[i].timings_ms, embed=(t1 - t0) * 1e3 / len(order),
                           align=(t2 - t1) * 1e3 / len(order))
            items[i]["result"] = _identified(services, session, path, prepared[i], queries[row], aligned[row],
                                             timings, top_k=top_k, candidates=candidates, far_target=far_target)
    return {"items": items, "models": path.versions(),
            "identified": sum(1 for item in items if "result" in item),
            "failed": sum(1 for item in items if "error" in item)}


def _best_other(services, session, artifact, query_runtime, query_aligned, speaker_id: int, how: str,
                speech_s: float | None, calibration: InForce) -> tuple[float, int] | None:
    """The best (LLR, speaker id) among the gallery's other profiles scored on the same path
    as the claim (the nearest in the indexes, scored exactly as identify scores them)."""
    gallery = services.gallery
    gallery.sync(session)
    ids = [i for i in _preselect(gallery, artifact, query_runtime, query_aligned, None) if i != speaker_id]
    scored = _score(artifact, query_runtime, gallery.profiles(artifact.target_version, ids),
                    gallery.profiles(artifact.source_version, ids), speech_s, calibration) if ids else {}
    same_path = [(llr, i) for i, (llr, path, _) in scored.items() if path == how]
    return max(same_path) if same_path else None


def _suspect_check(settings, score: float, best_other: tuple[float, int] | None) -> dict | None:
    """A claim is suspect when the audio matches another enrolled speaker about as well as,
    or better than, the claimed one: rejected whatever its own LLR (issue #12)."""
    if not settings.suspect_check:
        return None
    margin = settings.suspect_margin
    suspect = best_other is not None and best_other[0] >= score + margin
    return {"margin": margin, "suspect": suspect,
            "competing_score": None if best_other is None else best_other[0],
            "competing_speaker_id": None if best_other is None else best_other[1]}


def verify(services, data: bytes, *, speaker_id: int, far_target: float | None = None) -> dict:
    """Is it the claimed speaker? Accepted when the claimed profile's LLR reaches the
    operating point's threshold and (suspect check on) no other enrolled profile matches
    the audio about as well. ``suspect_check.competing_speaker_id`` names another speaker:
    the web layer shows it to admin keys only."""
    with services.session() as session:
        get_speaker(session, speaker_id)  # 404 before any work
        db.end_read(session)
        prepared, path, query_runtime, query_aligned, timings = _embed_query(services, session, data)
        artifact = path.artifact
        t0 = time.perf_counter()
        name = get_speaker(session, speaker_id).name  # it may have been deleted meanwhile
        enrolled = {p.speaker_id: p for p in profiles.read(session, artifact.target_version, [speaker_id])}
        runtime = {p.speaker_id: p for p in profiles.read(session, artifact.source_version, [speaker_id])}
        calibration = services.calibrations.current(session, artifact.name)
        scored = _score(artifact, query_runtime, enrolled, runtime, prepared.speech_s, calibration)
        if speaker_id not in scored:
            raise ApiError(409, "speaker_not_enrolled",
                           "This speaker has no completed enrollment yet; wait for its enrollment job.",
                           {"speaker_id": speaker_id})
        score, how, bridged = scored[speaker_id]
        best_other = (_best_other(services, session, artifact, query_runtime, query_aligned, speaker_id, how,
                                  prepared.speech_s, calibration) if services.settings.suspect_check else None)
    timings["search"] = (time.perf_counter() - t0) * 1e3
    operating_point = _operating_point(services, far_target, calibration)
    threshold = _threshold(artifact, how, operating_point)
    suspect = _suspect_check(services.settings, score, best_other)
    if score < threshold:
        reason = "below_threshold"
    elif suspect is not None and suspect["suspect"]:
        reason = "suspect_other_profile"
    else:
        reason = None
    return {"accepted": reason is None, "reason": reason, "score": score, "threshold": threshold,
            "operating_point": operating_point, "scoring": how, "suspect_check": suspect,
            "bridged_profile": bridged,
            "speaker": {"id": speaker_id, "name": name}, "speech_seconds": round(prepared.speech_s, 3),
            "models": path.versions(),
            "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
